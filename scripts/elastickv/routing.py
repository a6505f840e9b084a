# SPDX-License-Identifier: Apache-2.0
"""Routing metrics of "Understanding the Physics of KV Cache Compression" (arXiv 2603.01426), and an
element-level analogue for ElasticKV. Pure numpy; every function is a small pure function on arrays.

Conventions:

* A *cell* is one KV-cache slot (one token); cell index = the token's position in the caller's arrays.
* ``kept`` is bool ``[n_layer, n_head, n_cells]``: True when the cell is still attended by that KV head of
  that layer (a token-eviction policy removed it otherwise).
* ``answer_cells`` is a 1-d integer index array of the cells holding answer-relevant tokens. Duplicates are
  counted once; an empty set is a ValueError (every metric below is a mean over it).

Definitions (A = the set of answer cells, L layers, H KV heads per layer):

* GlobalEvicted(t) = 1 when no head keeps t, else 0.
  scope "model":  GER = mean_{t in A} [ not any_{l, h} kept[l, h, t] ]            (a float)
  scope "layer":  GER[l] = mean_{t in A} [ not any_{h} kept[l, h, t] ]          (an array [L])
  A token can be evicted by most heads and still be routed through the one that keeps it; GER counts only
  tokens that no route reaches any more.
* Eviction fraction (the non-global counterpart):
  EF = mean_{l, h, t in A} [ not kept[l, h, t] ]
* Head consensus of layer l, from ``scores`` float ``[L, H, n_cells]`` (accumulated attention per KV head)
  and ``valid`` bool ``[n_cells]`` (the cells to consider; ``valid_cells`` excludes attention sinks):
  HC[l] = |{ argmax_{t valid} scores[l, h, t] : h = 1..H }| / H, in [1/H, 1].
  1/H: every head's strongest cell is the same (full consensus); 1: every head routes to a different cell.
  Ties in the argmax go to the lowest cell index (numpy's first maximum).
* Element-level analogue (ElasticKV zeroes K/V *elements*, it never removes a token from the softmax: a
  zeroed key still gets a logit of q.k over its surviving elements, exp(0) = 1 at worst). So this is an
  analogue of GER, not GER. ``k_rows`` is float ``[L, n_cells, H, head_dim]``, K after sparsification:
  ElementEvicted(l, t) = 1 when, for EVERY KV head h of layer l, at least ``min_zero_frac`` of the entries
  of k_rows[l, t, h, :] are exactly 0 (-0.0 counts, NaN does not);
  EGZR[l] = mean_{t in A} ElementEvicted(l, t).
* Pearson r of two equal-length samples (e.g. GER of each item vs its error rate):
  r = sum(dx dy) / sqrt(sum dx^2 sum dy^2), dx = x - mean(x); nan when either side is constant.
"""

from __future__ import annotations

import math

import numpy as np

SCOPES = ("model", "layer")


def _array3(a, name: str, what: str) -> np.ndarray:
    """``a`` as an array of 3 non-empty dimensions, else a ValueError naming the shape."""
    x = np.asarray(a)
    if x.ndim != 3 or 0 in x.shape:
        raise ValueError(f"{name} must be {what} with no empty dimension, got shape {x.shape}")
    return x


def _kept(kept) -> np.ndarray:
    k = _array3(kept, "kept", "[n_layer, n_head, n_cells]")
    if k.dtype != np.bool_:
        raise ValueError(f"kept must be a bool array, got dtype {k.dtype}")
    return k


def _cells(answer_cells, n_cells: int) -> np.ndarray:
    """The answer cells as sorted unique indices into ``n_cells`` cells."""
    c = np.asarray(answer_cells)
    if c.size == 0:
        raise ValueError("answer_cells is empty: the metric is a mean over answer cells and is undefined without any")
    if c.ndim != 1 or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"answer_cells must be a 1-d integer index array, got shape {c.shape} dtype {c.dtype}")
    if c.min() < 0 or c.max() >= n_cells:
        raise ValueError(f"answer_cells must lie in [0, {n_cells}) (n_cells), got {int(c.min())}..{int(c.max())}")
    return np.unique(c)


def global_eviction_ratio(kept, answer_cells, scope: str = "model"):
    """GER: the fraction of answer cells kept by no head (scope "model": of any layer -> float;
    scope "layer": of that layer -> array [n_layer])."""
    k = _kept(kept)
    cells = _cells(answer_cells, k.shape[2])
    if scope == "model":
        return float((~k[:, :, cells].any(axis=(0, 1))).mean())
    if scope == "layer":
        return (~k[:, :, cells].any(axis=1)).mean(axis=1)
    raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


def eviction_fraction(kept, answer_cells) -> float:
    """Mean over layers, heads and answer cells of "not kept"."""
    k = _kept(kept)
    cells = _cells(answer_cells, k.shape[2])
    return float((~k[:, :, cells]).mean())


def valid_cells(n_cells: int, sink: int = 0) -> np.ndarray:
    """A ``valid`` mask for :func:`head_consensus`: all cells except the first ``sink`` (attention sinks)."""
    if not 0 <= sink < n_cells:
        raise ValueError(f"sink must be in [0, n_cells={n_cells}), got {sink}")
    v = np.ones(n_cells, dtype=bool)
    v[:sink] = False
    return v


def head_consensus(scores, valid) -> np.ndarray:
    """Per layer: distinct argmax cells (over valid cells) across KV heads / n_head; array [n_layer]."""
    s = _array3(scores, "scores", "[n_layer, n_head, n_cells]").astype(np.float64)
    v = np.asarray(valid)
    if v.dtype != np.bool_ or v.shape != (s.shape[2],):
        raise ValueError(f"valid must be bool of shape ({s.shape[2]},) (n_cells of scores {s.shape}), "
                         f"got shape {v.shape} dtype {v.dtype}")
    if not v.any():
        raise ValueError("valid selects no cell")
    if not np.isfinite(s[:, :, v]).all():
        raise ValueError("scores of valid cells must be finite")
    # invalid cells can never win; argmax returns the first maximum, i.e. the lowest cell index on ties
    top = np.where(v, s, -np.inf).argmax(axis=2)  # [n_layer, n_head]
    return np.array([np.unique(row).size for row in top], dtype=np.float64) / s.shape[1]


def mean_head_consensus(scores, valid) -> float:
    """The mean over layers of :func:`head_consensus`."""
    return float(head_consensus(scores, valid).mean())


def element_global_zero_ratio(k_rows, answer_cells, min_zero_frac: float = 0.5) -> np.ndarray:
    """Per layer: the fraction of answer cells whose K row is at least ``min_zero_frac`` exact zeros in every
    KV head of that layer; array [n_layer]. An analogue of GER, not GER (see the module docstring)."""
    k = np.asarray(k_rows)
    if k.ndim != 4 or 0 in k.shape:
        raise ValueError(f"k_rows must be [n_layer, n_cells, n_head, head_dim] with no empty dimension, "
                         f"got shape {k.shape}")
    if not np.issubdtype(k.dtype, np.floating):
        raise ValueError(f"k_rows must be a float array, got dtype {k.dtype}")
    if not 0.0 < min_zero_frac <= 1.0:
        raise ValueError(f"min_zero_frac must be in (0, 1], got {min_zero_frac}")
    cells = _cells(answer_cells, k.shape[1])
    zero_frac = (k[:, cells] == 0).mean(axis=3)  # [n_layer, n_answer, n_head]
    evicted = (zero_frac >= min_zero_frac).all(axis=2)  # every head of the layer
    return evicted.mean(axis=1)


def element_ger_summary(k_rows, answer_cells, min_zero_frac: float = 0.5) -> dict:
    """{"per_layer": [...], "max": ..., "mean": ...} of :func:`element_global_zero_ratio`."""
    per_layer = element_global_zero_ratio(k_rows, answer_cells, min_zero_frac)
    return {"per_layer": [float(x) for x in per_layer], "max": float(per_layer.max()),
            "mean": float(per_layer.mean())}


def pearson(x, y) -> float:
    """Pearson r of two equal-length 1-d samples (at least 2 points, finite); nan when a side is constant."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or a.size < 2:
        raise ValueError(f"pearson needs two 1-d samples of the same length >= 2, got shapes {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("pearson needs finite values")
    # exact test: the mean of a constant float sample can differ from its values by an ulp
    if (a == a[0]).all() or (b == b[0]).all():
        return math.nan
    da, db = a - a.mean(), b - b.mean()
    r = float((da * db).sum() / math.sqrt(float((da * da).sum()) * float((db * db).sum())))
    return max(-1.0, min(1.0, r))
