# SPDX-License-Identifier: Apache-2.0
"""StreamingLLM (arXiv 2309.17453): the sinks plus the most recent cells; the priority is the position."""

from __future__ import annotations

from .common import Policy, uniform_budget


def priority(b, pos, score):
    return pos.astype("float64")


POLICY = Policy("streaming", token=True, score="none", reset_score=False, priority=priority, layer_budget=uniform_budget)
