# SPDX-License-Identifier: Apache-2.0
"""topk_entries (Mustafar, arXiv 2505.22913): in each KV head's K or V row of a cell outside the sinks, the
k = ceil(fraction * head_dim) entries of largest |x| are kept (ties: lower index first), the rest zeroed."""

from __future__ import annotations

import math

import numpy as np

from .common import Budget, Policy


def apply(b: Budget, rows: np.ndarray) -> np.ndarray:
    """rows: float32 [n, n_head, head_dim]; returns a new array."""
    hd = rows.shape[-1]
    k = min(hd, math.ceil(b.fraction * hd))
    order = np.argsort(-np.abs(rows), axis=-1, kind="stable")
    out = rows.copy()
    np.put_along_axis(out, order[..., k:], 0.0, axis=-1)
    return out


POLICY = Policy("topk_entries", token=False, score="none", reset_score=False)
