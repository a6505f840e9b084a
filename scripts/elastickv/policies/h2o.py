# SPDX-License-Identifier: Apache-2.0
"""H2O (arXiv 2306.14048): heavy hitters by attention accumulated since the cell was written, per layer and
KV head (summed over the query heads sharing it), plus the recent window."""

from __future__ import annotations

from .common import Policy, uniform_budget


def priority(b, pos, score):
    return score


POLICY = Policy("h2o", token=True, score="attn", reset_score=False, priority=priority, layer_budget=uniform_budget)
