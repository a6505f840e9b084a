# SPDX-License-Identifier: Apache-2.0
"""LRU, least recently used (the kv-cache-compression notebook's LRU as it was meant to work), and ``lru_fifo``, the
notebook's LRU as it was coded (a timestamp set at arrival and never refreshed: first in, first out).

A cell is *used* when a query gives it more than its uniform share 1/n_kv of the attention in any query head of its
KV head: the "count" score of ScissorHands, accumulated since the last pass (with ELASTICKV_SCOPE=shared, summed over
every layer and head). Its *recency* is the index of the last pass at which it had been used since the pass before
(:func:`recency_after`); a cell written (or restored) after pass P-1 starts with recency P, so recency is known to
the resolution of a pass. The selection of :func:`common.select` then keeps the sinks, the recent window and, of
the other cells, the most recently used (ties: higher position). ``lru_fifo`` records no use: its recency is the
arrival, so it keeps the newest cells, StreamingLLM's set.
"""

from __future__ import annotations

import numpy as np

from .common import Policy, uniform_budget


def priority(b, pos, recency):
    return np.asarray(recency, dtype=np.float64)


def recency_after(policy: Policy, recency_before: np.ndarray, score: np.ndarray | None, pass_id: int) -> np.ndarray:
    """The recency after pass ``pass_id`` (what the selection reads): ``pass_id`` for the cells used since the last
    pass (score > 0; lru only), the recency before the pass otherwise. float32, like the hook's."""
    rec = np.asarray(recency_before, dtype=np.float32).copy()
    if policy.score != "none" and score is not None:
        rec[np.asarray(score) > 0] = np.float32(pass_id)
    return rec


POLICY = Policy("lru", token=True, score="count", reset_score=True, priority=priority, layer_budget=uniform_budget,
                recency=True)
FIFO = Policy("lru_fifo", token=True, score="none", reset_score=False, priority=priority,
              layer_budget=uniform_budget, recency=True)
