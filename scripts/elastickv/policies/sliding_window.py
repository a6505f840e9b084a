# SPDX-License-Identifier: Apache-2.0
"""Sliding window (the kv-cache-compression notebook's SlidingWindow): the last B cells and nothing else, no sinks
(ELASTICKV_SINK is refused with it) and no heavy part; StreamingLLM without its sinks."""

from __future__ import annotations

from .common import Policy, uniform_budget


def priority(b, pos, score):
    return pos.astype("float64")


POLICY = Policy("sliding_window", token=True, score="none", reset_score=False, priority=priority,
                layer_budget=uniform_budget, sinks=False)
