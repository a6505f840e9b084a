# SPDX-License-Identifier: Apache-2.0
"""Learned eviction (the kv-cache-compression notebook's LearnedEviction, as it was meant to work).

The notebook's MLP (64 -> 128 -> 64 -> 1, ReLU, a sigmoid at the end; one network for every layer) scores each cell
from its key averaged over the layer's KV heads (:func:`semantic.mean_keys`); beyond the sinks and the recent
window the cells of highest score are kept. The sigmoid keeps the order, so the priority is the output before it
(:func:`logits`), which the hook computes operation by operation as here (llama-elastickv-policy-learned.cpp). Every
head of a layer keeps the same cells. The network is trained by scripts/analysis/train_learned.py.

Weights file (``ELASTICKV_LEARNED_WEIGHTS``), little-endian: the 8 bytes ``EKVMLP01``, uint32 n (layers), uint32
dims[n + 1] (the last is 1), then per layer float32 W [out, in] and float32 b [out].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import Policy, uniform_budget

MAGIC = b"EKVMLP01"
#: the notebook's layer sizes (its input is a key of head dimension 64)
DIMS = (64, 128, 64, 1)


def priority(b, pos, logit):
    return np.asarray(logit, dtype=np.float64)


def write_weights(path: Path, weights: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    """Writes [(W [out, in], b [out]), ...] as float32 in the hook's format (atomically)."""
    dims = [weights[0][0].shape[1]] + [W.shape[0] for W, _ in weights]
    if dims[-1] != 1:
        raise ValueError(f"the last layer must have one output, not {dims[-1]}")
    parts = [MAGIC, np.uint32(len(weights)).tobytes(), np.asarray(dims, dtype="<u4").tobytes()]
    for (W, b), i, o in zip(weights, dims[:-1], dims[1:]):
        if W.shape != (o, i) or b.shape != (o,):
            raise ValueError(f"a layer of shape {W.shape} / {b.shape} where ({o}, {i}) / ({o},) was expected")
        parts += [np.asarray(W, dtype="<f4").tobytes(), np.asarray(b, dtype="<f4").tobytes()]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(parts))
    tmp.replace(path)
    return path


def read_weights(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The layers of a weights file, float32; ValueError naming what is wrong."""
    raw = Path(path).read_bytes()
    if raw[:8] != MAGIC:
        raise ValueError(f"{path}: not an MLP weights file (no {MAGIC.decode()} header)")
    n = int(np.frombuffer(raw, "<u4", 1, 8)[0])
    dims = np.frombuffer(raw, "<u4", n + 1, 12).astype(int)
    off, out = 12 + 4 * (n + 1), []
    for i, o in zip(dims[:-1], dims[1:]):
        W = np.frombuffer(raw, "<f4", o * i, off).reshape(o, i)
        off += 4 * o * i
        b = np.frombuffer(raw, "<f4", o, off)
        off += 4 * o
        out.append((W.copy(), b.copy()))
    if off != len(raw):
        raise ValueError(f"{path}: {len(raw) - off} bytes more than its layer sizes say")
    return out


def logits(weights: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """The output before the sigmoid for the rows of x [m, in] (float64), float64 [m]: per unit, the products
    W[o, i] * x[i] summed over i in order, then + b[o]; ReLU after every layer but the last (as the hook)."""
    h = np.asarray(x, dtype=np.float64)
    for li, (W, b) in enumerate(weights):
        W64 = W.astype(np.float64)
        acc = np.zeros((h.shape[0], W.shape[0]))
        for i in range(W.shape[1]):
            acc += W64[None, :, i] * h[:, i:i + 1]
        acc = acc + b.astype(np.float64)[None, :]
        h = np.where(acc < 0.0, 0.0, acc) if li + 1 < len(weights) else acc
    return h[:, 0]


POLICY = Policy("learned", token=True, score="none", reset_score=False, priority=priority,
                layer_budget=uniform_budget, learned=True)
