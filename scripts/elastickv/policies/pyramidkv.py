# SPDX-License-Identifier: Apache-2.0
"""PyramidKV (arXiv 2406.02069): observation-window attention (the queries since the last pass) and
per-layer budgets decreasing linearly with depth:

  B_top = max(B/beta, 2B - n), B_0 = 2B - B_top, B_l = B_0 + (B_top - B_0) * l / (L - 1), rounded half up,
  clipped to [0, n]; the mean over layers is B (the max() flattens the slope when B_0 would exceed n).
"""

from __future__ import annotations

import math

from .common import Policy


def priority(b, pos, score):
    return score


def layer_budget(b, B: int, n: int, layer: int, n_layer: int) -> int:
    if n_layer <= 1:
        return B
    top = max(B / b.beta, 2.0 * B - n)
    bottom = 2.0 * B - top
    Bl = bottom + (top - bottom) * layer / (n_layer - 1)
    return min(n, max(0, int(math.floor(Bl + 0.5))))


POLICY = Policy("pyramidkv", token=True, score="attn", reset_score=True, priority=priority, layer_budget=layer_budget)
