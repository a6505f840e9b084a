# SPDX-License-Identifier: Apache-2.0
"""random_entries, the matched-random element ablation: entry j of KV head h of the cell at position pos,
cache layer l, kind k (0 = K, 1 = V) is zeroed when (hash(seed, l, k, pos, h*head_dim + j) >> 11) * 2^-53
< 1 - fraction. Cells in the sinks are untouched."""

from __future__ import annotations

import numpy as np

from .common import Budget, Policy, hash64


def apply(b: Budget, rows: np.ndarray, pos: np.ndarray, layer: int, kind: int) -> np.ndarray:
    """rows: float32 [n, n_head, head_dim] of the cells at ``pos`` (none in the sinks); returns a new array."""
    n, n_head, hd = rows.shape
    idx = np.arange(n_head * hd, dtype=np.int64).reshape(1, n_head, hd)
    h = hash64(b.seed, layer, kind, np.asarray(pos, dtype=np.int64).reshape(n, 1, 1), idx)
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    out = rows.copy()
    out[u < 1.0 - b.fraction] = 0.0
    return out


POLICY = Policy("random_entries", token=False, score="none", reset_score=False)
