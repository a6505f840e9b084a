# SPDX-License-Identifier: Apache-2.0
"""Semantic clustering (the kv-cache-compression notebook's SemanticCluster, as it was meant to work).

At every pass, for each layer and KV head: a seeded K-means over the keys of the candidate cells (not a sink, not in
the recent window, not evicted: :func:`common.candidates`); the cell nearest each centroid gets priority 1, every other
candidate 0, so :func:`common.select` keeps the representatives and fills the rest of the budget with the most recent
candidates. Keys are the cache's (post-RoPE) as float64: a KV head's own (``cluster_keys="head"``, the default) or the
layer's averaged over its KV heads (``"mean"``, the notebook's; then every head of the layer keeps the same cells).

The K-means, operation by operation as the hook computes it (llama-elastickv-policy-semantic.cpp; both round each
double operation the same way, libllama having no FMA contraction):

* K' = min(clusters, heavy, candidates); nothing when 0;
* init: the K' candidates of highest ``hash(seed, tag, pos)`` (tag = layer * 65536 + KV head, or layer * 65536 with
  mean keys; ties: lower position first), in that order;
* at most 16 times: assign every candidate to the nearest centroid (squared distance summed over the dimensions in
  order; ties: the lower index); stop when no assignment changed; otherwise each centroid becomes the mean of its
  members (summed in ascending position), an empty one stays;
* per non-empty cluster, keep the member nearest its centroid (ties: the higher position).
"""

from __future__ import annotations

import numpy as np

from .common import Policy, hash64, uniform_budget

MAX_ITER = 16


def priority(b, pos, representative):
    return np.asarray(representative, dtype=np.float64)


def _d2(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances [m, K] of rows x [m, d] to centroids c [K, d], summed over d in order (as the hook)."""
    acc = np.zeros((x.shape[0], c.shape[0]))
    for j in range(x.shape[1]):
        t = x[:, None, j] - c[None, :, j]
        acc += t * t
    return acc


def mean_keys(keys: np.ndarray) -> np.ndarray:
    """A layer's keys [n, n_head, hd] (float32) averaged over the KV heads in float64, heads summed in order."""
    acc = np.zeros((keys.shape[0], keys.shape[2]))
    for g in range(keys.shape[1]):
        acc += keys[:, g, :].astype(np.float64)
    return acc / keys.shape[1]


def representatives(x: np.ndarray, pos: np.ndarray, cand: np.ndarray, heavy: int, clusters: int, seed: int,
                    tag: int) -> np.ndarray:
    """Priority float32 [n]: 1 for the cells nearest the centroids of the K-means over the candidates ``cand``
    (indices into ``pos``), whose vectors are rows of ``x`` [n, d] (float64)."""
    n = len(pos)
    prio = np.zeros(n, dtype=np.float32)
    m = len(cand)
    K = min(clusters, heavy, m)
    if K <= 0:
        return prio
    X = np.asarray(x, dtype=np.float64)[cand]
    h = hash64(seed, tag, np.asarray(pos)[cand])
    order = sorted(range(m), key=lambda i: -int(h[i]))  # stable: ties keep the lower position first
    C = X[np.asarray(order[:K])].copy()
    a = None
    for _ in range(MAX_ITER):
        a_new = np.argmin(_d2(X, C), axis=1)
        if a is not None and np.array_equal(a_new, a):
            break
        a = a_new
        S = np.zeros_like(C)
        np.add.at(S, a, X)  # unbuffered, in index order: the members summed in ascending position
        cnt = np.bincount(a, minlength=K)
        C = np.where(cnt[:, None] > 0, S / np.maximum(cnt, 1)[:, None], C)
    d = _d2(X, C)[np.arange(m), a]
    for k in range(K):
        members = np.flatnonzero(a == k)
        if len(members):
            best = members[d[members] == d[members].min()][-1]  # ties: the higher position
            prio[cand[best]] = 1.0
    return prio


POLICY = Policy("semantic", token=True, score="none", reset_score=False, priority=priority,
                layer_budget=uniform_budget, clusters=True)
