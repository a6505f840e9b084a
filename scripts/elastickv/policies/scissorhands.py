# SPDX-License-Identifier: Apache-2.0
"""ScissorHands (arXiv 2305.17118): persistence of importance. The score counts the (query, query head)
pairs of the history window (the queries since the last pass) that gave the cell more than 1/n_kv."""

from __future__ import annotations

from .common import Policy, uniform_budget


def priority(b, pos, score):
    return score


POLICY = Policy("scissorhands", token=True, score="count", reset_score=True, priority=priority,
                layer_budget=uniform_budget)
