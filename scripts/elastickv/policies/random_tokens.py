# SPDX-License-Identifier: Apache-2.0
"""Random token eviction: h2o's sinks, recent window and split, with the seeded priority
hash(seed, pos) >> 11 in place of attention (the same cells in every layer and head)."""

from __future__ import annotations

import numpy as np

from .common import Policy, hash64, uniform_budget


def priority(b, pos, score):
    return (hash64(b.seed, pos) >> np.uint64(11)).astype(np.float64)


POLICY = Policy("random_tokens", token=True, score="none", reset_score=False, priority=priority,
                layer_budget=uniform_budget)
