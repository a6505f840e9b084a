# SPDX-License-Identifier: Apache-2.0
"""What every token policy shares: the budget, the sinks, the recent window and the selection.

At a pass, for one sequence, layer and KV head (cells in ascending position, ``evicted`` before the pass):

  n      cells of the sequence; B = ceil(fraction * n) or min(cells, n) (ELASTICKV_BUDGET); B_l = the
         policy's layer budget (B for every policy but pyramidkv)
  sinks  pos < sink, always kept (none for a policy without sinks);             avail = max(B_l - n_sinks, 0)
  R      recent window: min(recent, avail) if ELASTICKV_RECENT is set, else floor((1 - heavy_ratio)*avail + 0.5);
         cells with pos > pos_max - R are always kept
  heavy  avail - R cells are kept among the other cells not yet evicted: highest priority first, ties to the
         higher position; the remaining candidates are evicted. Evicted cells stay evicted.

The hash is splitmix64's finaliser chained over a tuple: h = mix(seed), then h = mix(h ^ a) for each a.

Scores (:func:`scores_of_queries`): for a KV head, the attention probabilities its cells receive from each query
and each query head that reads the KV head, summed ("attn", H2O), or the number of those (query, query head)
pairs that give a cell more than 1/n_kv ("count", ScissorHands; n_kv = the cells of the attention's KV view).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Budget:
    fraction: float = 0.0  # > 0: fraction kept
    cells: int = 0  # > 0: cells kept (token policies)
    recent: int = -1  # -1: auto
    heavy_ratio: float = 0.8
    seed: int = 42
    beta: float = 20.0
    clusters: int = 32  # semantic: K
    cluster_keys: str = "head"  # semantic: "head" (each KV head's keys) or "mean" (each layer's, averaged over heads)
    learned_weights: str = ""  # learned: the MLP's weights file


@dataclass(frozen=True)
class Policy:
    name: str
    token: bool
    score: str  # "none", "attn" (accumulated probability) or "count" (1[p > 1/n_kv])
    reset_score: bool  # scores cover the queries since the last pass only
    priority: Callable[[Budget, np.ndarray, np.ndarray], np.ndarray] | None = None  # (budget, pos, score) -> float64
    layer_budget: Callable[[Budget, int, int, int, int], int] | None = None  # (budget, B, n, layer, n_layer)
    sinks: bool = True  # False: ELASTICKV_SINK is not used, no cell is kept for its position (sliding_window)
    recency: bool = False  # the priority reads the cell's recency, not its score (lru, lru_fifo; see lru.py)
    clusters: bool = False  # the priority marks the representatives of a K-means (semantic; see semantic.py)
    learned: bool = False  # the priority is an MLP's output on the layer's mean key (learned; see learned.py)


def uniform_budget(b: Budget, B: int, n: int, layer: int, n_layer: int) -> int:
    return B


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_NONFINITE = re.compile(r"[+-]?(inf|infinity|nan)", re.IGNORECASE)


def decimal_int(text: str) -> int:
    """An integer as the hook reads one (llama-elastickv-config.cpp ekv_parse_int): decimal digits with an optional
    sign, nothing else (no spaces, no underscores, which Python's int() would accept); ValueError otherwise."""
    if not _INT.fullmatch(text):
        raise ValueError(f"{text!r} is not a decimal integer")
    return int(text, 10)


def decimal_float(text: str) -> float:
    """A number as the hook reads one (ekv_plain_number, then strtod): decimal, an optional sign and exponent, or
    inf/infinity/nan (returned as such, for the caller to refuse as not finite); no spaces, underscores or hex.
    Underflow gives 0 (as strtod's result), overflow infinity."""
    if not (_FLOAT.fullmatch(text) or _NONFINITE.fullmatch(text)):
        raise ValueError(f"{text!r} is not a decimal number")
    return float(text)


def parse_budget(text: str) -> Budget:
    """ELASTICKV_BUDGET as the hook reads it: "0.5" or "50%" (fraction), "2048" (cells)."""
    s = str(text)
    if s.endswith("%"):
        v = decimal_float(s[:-1])
        if not 0 < v <= 100:
            raise ValueError(f"ELASTICKV_BUDGET={s!r} is not a percentage in (0%, 100%]")
        return Budget(fraction=v / 100.0)
    if any(c in s for c in ".eE"):
        v = decimal_float(s)
        if not 0 < v <= 1:
            raise ValueError(f"ELASTICKV_BUDGET={s!r} is not a fraction in (0, 1]")
        return Budget(fraction=v)
    v = decimal_int(s)
    if v < 1:
        raise ValueError(f"ELASTICKV_BUDGET={s!r} is out of range")
    return Budget(cells=v)


def budget_cells(b: Budget, n: int) -> int:
    if b.fraction > 0:
        return min(n, math.ceil(b.fraction * n))
    return min(n, b.cells)


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash64(seed: int, *parts) -> np.ndarray:
    """hash(seed, a_1, ..., a_k), broadcast over array parts; uint64 with wrap-around as in C++."""
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(seed & MASK, dtype=np.uint64))
        for a in parts:
            h = _mix(h ^ np.asarray(a, dtype=np.int64).astype(np.uint64))
    return h


def candidates(policy: Policy, b: Budget, sink: int, B_layer: int, pos: np.ndarray,
               evicted: np.ndarray) -> tuple[np.ndarray, int]:
    """(candidates, heavy) of a selection: the indices of the cells that are not sinks, not in the recent window and
    not evicted yet (ascending position), and how many of them are kept."""
    pos = np.asarray(pos, dtype=np.int64)
    n = len(pos)
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    pos_max = int(pos[-1])
    if not policy.sinks:
        sink = 0
    n_sink = int(np.count_nonzero(pos < sink))
    avail = max(B_layer - n_sink, 0)
    R = min(b.recent, avail) if b.recent >= 0 else int(math.floor((1.0 - b.heavy_ratio) * avail + 0.5))
    R = min(R, avail)
    heavy = avail - R
    cand = np.flatnonzero((pos >= sink) & (pos <= pos_max - R) & ~np.asarray(evicted, dtype=bool))
    return cand, heavy


def select(policy: Policy, b: Budget, sink: int, B_layer: int, pos: np.ndarray, score: np.ndarray | None,
           evicted: np.ndarray) -> np.ndarray:
    """The evicted flags after the pass (a new array) for one sequence, layer and KV head. ``score`` is what the
    priority reads: the accumulated score, the recency for a recency policy (:func:`lru.recency_after`), or the
    representative flags of semantic (:func:`semantic.representatives`)."""
    pos = np.asarray(pos, dtype=np.int64)
    out = np.asarray(evicted, dtype=bool).copy()
    cand, heavy = candidates(policy, b, sink, B_layer, pos, out)
    if len(cand) <= heavy:
        return out
    sc = np.zeros(len(pos), dtype=np.float32) if score is None else np.asarray(score, dtype=np.float32)
    prio = policy.priority(b, pos[cand], sc[cand].astype(np.float64))
    # highest priority first, ties: higher position first
    order = np.lexsort((-pos[cand], -prio))
    out[cand[order[heavy:]]] = True
    return out


def attention_probs(q: np.ndarray, q_pos: np.ndarray, k: np.ndarray, k_pos: np.ndarray, evicted: np.ndarray,
                    scale: float) -> np.ndarray:
    """softmax(scale * q.k) of queries ``q`` [T, d] at ``q_pos`` over keys ``k`` [n, d] at ``k_pos``, in float64:
    a query sees the keys at positions up to its own (causal) that are not ``evicted`` (-inf bias). [T, n]."""
    logits = (np.asarray(q, np.float64) @ np.asarray(k, np.float64).T) * float(scale)
    visible = (np.asarray(k_pos)[None, :] <= np.asarray(q_pos)[:, None]) & ~np.asarray(evicted, bool)[None, :]
    logits = np.where(visible, logits, -np.inf)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def scores_of_queries(kind: str, q: np.ndarray, q_pos: np.ndarray, k: np.ndarray, k_pos: np.ndarray,
                      evicted: np.ndarray, scale: float, n_kv: int = 0, rel_margin: float = 0.0) -> np.ndarray:
    """What one ubatch adds to the scores of one layer: ``q`` [n_head, T, d] (the ubatch's queries), ``k``
    [n, n_head_kv, d] (the sequence's keys), ``evicted`` [n_head_kv, n] before the ubatch. Query head i reads KV
    head i // G (G = n_head / n_head_kv). Returns float64 [n_head_kv, n]: summed probabilities ("attn") or the
    count of probabilities above 1/n_kv ("count"; above (1 + rel_margin)/n_kv, to bound it under rounding)."""
    n_head, n_kv_head = q.shape[0], k.shape[1]
    G = n_head // n_kv_head
    out = np.zeros((n_kv_head, k.shape[0]))
    for i in range(n_head):
        h = i // G
        p = attention_probs(q[i], q_pos, k[:, h, :], k_pos, evicted[h], scale)
        out[h] += p.sum(axis=0) if kind == "attn" else (p > (1.0 + rel_margin) / n_kv).sum(axis=0)
    return out
