# SPDX-License-Identifier: Apache-2.0
"""numpy definitions of the baselines selectable by ELASTICKV_POLICY (the hook's C++ is tested against them).

Token policies (one module each: streaming, h2o, scissorhands, pyramidkv, random_tokens, sliding_window, lru with
its lru_fifo variant, semantic, learned) evict whole cells per layer and KV head through a -inf attention bias; they share
:func:`common.select`, and differ in the priority of a cell (lru: its recency, :func:`lru.recency_after`; semantic: the representatives of a K-means,
:func:`semantic.representatives`; learned: an MLP's output, :func:`learned.logits`), in the
per-layer budget and in whether sinks are kept. Element policies (random_entries, topk_entries) zero single
K/V entries of each cell outside the sinks, once per cell.

``POLICIES[name]`` is a :class:`common.Policy`; ``policy(name)`` raises a ValueError naming the accepted
names. The rules are stated in :mod:`common` and in cuda_hook/tree/src/llama-elastickv-policy.h.
"""

from __future__ import annotations

from . import (common, h2o, learned, lru, pyramidkv, random_entries, random_tokens, scissorhands, semantic, sliding_window,
               streaming, topk_entries)
from .common import Budget, Policy, budget_cells, hash64, parse_budget, select

TOKEN_POLICIES = ("streaming", "h2o", "scissorhands", "pyramidkv", "random_tokens", "sliding_window", "lru", "lru_fifo",
                  "semantic", "learned")
ELEMENT_POLICIES = ("random_entries", "topk_entries")
#: every value of ELASTICKV_POLICY, ElasticKV first
NAMES = ("elastickv",) + TOKEN_POLICIES + ELEMENT_POLICIES

POLICIES: dict[str, Policy] = {
    "streaming": streaming.POLICY,
    "h2o": h2o.POLICY,
    "scissorhands": scissorhands.POLICY,
    "pyramidkv": pyramidkv.POLICY,
    "random_tokens": random_tokens.POLICY,
    "sliding_window": sliding_window.POLICY,
    "lru": lru.POLICY,
    "lru_fifo": lru.FIFO,
    "semantic": semantic.POLICY,
    "learned": learned.POLICY,
    "random_entries": random_entries.POLICY,
    "topk_entries": topk_entries.POLICY,
}


def policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; accepted: {', '.join(POLICIES)}")
    return POLICIES[name]


__all__ = ["Budget", "Policy", "POLICIES", "NAMES", "TOKEN_POLICIES", "ELEMENT_POLICIES", "budget_cells", "hash64",
           "parse_budget", "policy", "select", "common"]
