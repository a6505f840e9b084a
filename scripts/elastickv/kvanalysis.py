# SPDX-License-Identifier: Apache-2.0
"""Numpy building blocks of the analyses of real K/V (``ELASTICKV_DUMP`` folders, scripts/analysis/).

Conventions used everywhere below:

* ``x`` is one cache tensor of one layer as dumped: float32 ``[n_cells, n_head, head_dim]``, rows sorted by
  position (``load_layers`` sorts them). A *unit* is one (layer, KV head); a *row* is one cell of one head
  (``head_dim`` values).
* The *region* is the cells with position >= SINK, the only cells ElasticKV thresholds and counts.
* The ElasticKV mask is ``reference.threshold_dump`` (the numpy definition of the op, which the hook's own
  "after" arrays match bit for bit): tau = scale * mean(|x|) over the region, per head; zero |x| < tau.
* Proxy attention (dumps hold no queries): the query of position t is the model's own dense key of
  position t (post-RoPE, as cached), scores are q.k / sqrt(head_dim), and a query attends causally to the
  keys of positions strictly before t (its own key is left out: no real query reproduces a key's squared
  norm). It is a simulation of attention, not the model's attention.

Everything except ``open_dump`` / ``load_layers`` is a small pure function on arrays (tests/test_kvanalysis.py
checks them on hand-made arrays with known answers).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from . import config, dump, kvdump, models, paths, reference, startup

# ----------------------------------------------------------------------------------------------------------
# reading dumps (I/O)


class AnalysisError(RuntimeError):
    """A dump or an option the analysis cannot use; the message says what is wrong."""


#: what an analysis script reports as a one-line error (exit 1) rather than a traceback
USER_ERRORS = startup.driver_errors(AnalysisError)


@dataclass
class LayerKV:
    """One layer of one dumped pass, rows sorted by position."""

    layer: int
    pos: np.ndarray  # int64 [n]
    k: np.ndarray  # float32 [n, n_head, head_dim], before the pass (the model's own K)
    v: np.ndarray  # float32 [n, n_head, head_dim]
    k_after: np.ndarray | None = None  # the hook's output (sweet preset in kvdump dumps)
    v_after: np.ndarray | None = None


def add_dump_argument(ap) -> None:
    """``--dumps DIR``: the folder of the dumps' run records (default results/dumps, the archive)."""
    ap.add_argument("--dumps", type=Path, default=None,
                    help="folder of the K/V dumps' run records (default: results/dumps; a dump missing there is made "
                         "and its record written there)")


def open_dump(model: str, ctx: int, records: Path | None = None) -> tuple[dump.DumpPass, Path]:
    """The first pass of the kvdump dump of ``model`` (made if missing) and the path of its run record, which
    lives in ``records`` (default: results/dumps)."""
    folder, _ = kvdump.ensure(model, ctx, records=records)
    c, p = dump.passes(folder)[0]
    dp = dump.load(folder, c, p)
    seqs = dp.manifest.get("seqs", [])
    if len(seqs) != 1:
        raise AnalysisError(f"{paths.relative(folder)}: the analyses need a single-sequence pass, got {len(seqs)}")
    if dp.manifest.get("v_trans"):
        raise AnalysisError(f"{paths.relative(folder)}: V was dumped transposed; the analyses expect flash attention on")
    return dp, kvdump.record_path(model, ctx, records)


def select_layers(available: list[int], wanted: list[int] | None) -> list[int]:
    """``wanted`` (None: all), checked against the dump's layers."""
    if wanted is None:
        return list(available)
    bad = [w for w in wanted if w not in available]
    if bad:
        raise AnalysisError(f"layers {bad} are not in the dump (it has {available[0]}..{available[-1]})")
    return list(wanted)


def load_layers(dp: dump.DumpPass, layers: list[int], after: bool = False) -> Iterator[LayerKV]:
    """Yields the layers of a pass with rows sorted by position (K and V cells must be the same)."""
    ck, cv = dp.cells["k"], dp.cells["v"]
    if not np.array_equal(ck, cv):
        raise AnalysisError(f"{dp.prefix}: K and V list different cells")
    order = np.argsort(ck[:, 2], kind="stable")
    pos = ck[order, 2].astype(np.int64)
    if np.any(np.diff(pos) <= 0):
        raise AnalysisError(f"{dp.prefix}: positions repeat; the analyses need one sequence")
    for layer in layers:
        item = LayerKV(layer, pos, dp.values(layer, "k", "before")[order], dp.values(layer, "v", "before")[order])
        if after:
            item.k_after = dp.values(layer, "k", "after")[order]
            item.v_after = dp.values(layer, "v", "after")[order]
        yield item


def check_common(cfg: dict) -> None:
    """Checks the keys every analysis config has (models, ctx, layers, sink, output); ConfigError if wrong."""
    if not cfg.get("models"):
        raise config.ConfigError("models: give at least one model name (configs/models.yaml)")
    for m in cfg["models"]:
        models.entry(m)  # unknown names fail before anything runs
    layers = cfg.get("layers")
    if layers is not None and (not isinstance(layers, list) or not layers
                               or not all(isinstance(x, int) and x >= 0 for x in layers)):
        raise config.ConfigError(f"layers: null (all) or a non-empty list of layer numbers, got {layers!r}")
    if not isinstance(cfg.get("ctx"), int) or cfg["ctx"] <= 0:
        raise config.ConfigError(f"ctx: the dump's context (a positive integer), got {cfg.get('ctx')!r}")
    if not isinstance(cfg.get("sink"), int) or cfg["sink"] < 0:
        raise config.ConfigError(f"sink: protected positions (an integer >= 0), got {cfg.get('sink')!r}")
    if not cfg.get("output"):
        raise config.ConfigError("output: the aggregate JSON to write (below results/)")


# ----------------------------------------------------------------------------------------------------------
# ElasticKV and matched random zeroing


def region(pos: np.ndarray, sink: int) -> np.ndarray:
    """Bool [n]: the cells ElasticKV thresholds (position >= sink)."""
    return np.asarray(pos) >= sink


def tau(x: np.ndarray, reg: np.ndarray, scale: float) -> np.ndarray:
    """float64 [n_head]: scale * mean(|x|) over the region rows of each head (the op's threshold)."""
    ax = np.abs(x[reg]).astype(np.float64)
    return np.float64(np.float32(scale)) * ax.mean(axis=(0, 2))


def ekv_mask(x: np.ndarray, reg: np.ndarray, scale: float) -> np.ndarray:
    """Bool mask of the entries ElasticKV zeroes (``reference.threshold_dump``, one sequence)."""
    return reference.threshold_dump(x, np.zeros(len(x), dtype=np.int64), np.asarray(reg, dtype=bool), scale)


def matched_random_mask(x: np.ndarray, reg: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bool mask zeroing exactly ``counts[h]`` entries of head h, drawn uniformly without replacement among
    the non-zero entries of the region rows (so the resulting zero count equals the matched method's)."""
    mask = np.zeros(x.shape, dtype=bool)
    rows = np.flatnonzero(reg)
    for h in range(x.shape[1]):
        sub = x[rows, h, :]
        cand = np.flatnonzero(sub != 0)
        c = int(counts[h])
        if c > len(cand):
            raise ValueError(f"head {h}: {c} zeros requested, only {len(cand)} non-zero entries in the region")
        pick = cand[rng.choice(len(cand), size=c, replace=False)]
        m = np.zeros(sub.size, dtype=bool)
        m[pick] = True
        mask[rows, h, :] = m.reshape(sub.shape)
    return mask


def zero(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``x`` with the masked entries set to 0 (same dtype)."""
    return np.where(mask, np.zeros((), dtype=x.dtype), x)


def zero_fraction(x: np.ndarray) -> float:
    """Fraction of exact zeros."""
    return float(np.mean(np.asarray(x) == 0))


# ----------------------------------------------------------------------------------------------------------
# proxy attention and its metrics (one head at a time: q [nq, d], k [nk, d], v [nk, dv])


def query_rows(n: int, n_queries: int) -> np.ndarray:
    """Indices of the proxy queries: the last ``n_queries`` rows (positions) of the cache."""
    if not 0 < n_queries < n:
        raise ValueError(f"n_queries must be in 1..{n - 1}, got {n_queries}")
    return np.arange(n - n_queries, n)


def attention(q: np.ndarray, q_pos: np.ndarray, k: np.ndarray, k_pos: np.ndarray,
              keep: np.ndarray | None = None) -> np.ndarray:
    """float64 [nq, nk] causal softmax(q.k / sqrt(d)) over the keys with position < the query's (and
    ``keep``); invisible keys get probability 0. A query with no visible key gets an all-zero row."""
    d = q.shape[-1]
    s = (q.astype(np.float64) @ k.astype(np.float64).T) / math.sqrt(d)
    vis = np.asarray(k_pos)[None, :] < np.asarray(q_pos)[:, None]
    if keep is not None:
        vis &= np.asarray(keep, dtype=bool)[None, :]
    s = np.where(vis, s, -np.inf)
    m = s.max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(vis, np.exp(s - m), 0.0)
    tot = e.sum(axis=1, keepdims=True)
    return np.divide(e, tot, out=np.zeros_like(e), where=tot > 0)


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats of each row of ``p`` (0 log 0 = 0)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log(p), 0.0)
    return -t.sum(axis=-1)


def normalised_entropy(p: np.ndarray, n_visible: np.ndarray) -> np.ndarray:
    """entropy / log(n_visible) per row: 1 for uniform attention, 0 for one key (rows with < 2 keys: 0)."""
    n = np.asarray(n_visible, dtype=np.float64)
    logn = np.log(np.maximum(n, 1.0))
    return np.divide(entropy(p), logn, out=np.zeros_like(logn), where=n > 1)


def topk_mass(p: np.ndarray, k: int) -> np.ndarray:
    """Attention mass on the k most attended keys, per row (selectivity: 1 = all mass on <= k keys)."""
    p = np.asarray(p, dtype=np.float64)
    k = min(k, p.shape[-1])
    return -np.sort(-p, axis=-1)[..., :k].sum(axis=-1)


def rel_error(approx: np.ndarray, exact: np.ndarray) -> float:
    """||approx - exact||_F / ||exact||_F (0 when both are 0)."""
    a, e = np.asarray(approx, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    den = np.linalg.norm(e)
    num = np.linalg.norm(a - e)
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return float(num / den)


def energy_removed(x: np.ndarray, x_hat: np.ndarray) -> float:
    """||x - x_hat||^2 / ||x||^2: for zeroing, the fraction of x's L2 energy that was removed."""
    x64, h64 = np.asarray(x, dtype=np.float64), np.asarray(x_hat, dtype=np.float64)
    den = float(np.sum(x64 * x64))
    num = float(np.sum((x64 - h64) ** 2))
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return num / den


def attend(q: np.ndarray, q_pos: np.ndarray, k: np.ndarray, v: np.ndarray, k_pos: np.ndarray,
           keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Proxy attention of one head: (probabilities [nq, nk], outputs p @ v [nq, dv], visible keys per query)."""
    p = attention(q, q_pos, k, k_pos, keep)
    vis = np.asarray(k_pos)[None, :] < np.asarray(q_pos)[:, None]
    if keep is not None:
        vis &= np.asarray(keep, dtype=bool)[None, :]
    return p, p @ np.asarray(v, dtype=np.float64), vis.sum(axis=1)


def attention_stats(p: np.ndarray, n_visible: np.ndarray, topk: int) -> dict:
    """Means over the queries: entropy (nats), normalised entropy, effective keys exp(entropy), top-k mass."""
    h = entropy(p)
    return {"entropy": float(h.mean()), "entropy_norm": float(normalised_entropy(p, n_visible).mean()),
            "effective_keys": float(np.exp(h).mean()), "topk_mass": float(topk_mass(p, topk).mean())}


def total_variation(p: np.ndarray, p_ref: np.ndarray) -> float:
    """Mean over rows of 0.5 * sum |p - p_ref| (0: same attention, 1: disjoint)."""
    return float(0.5 * np.abs(np.asarray(p, dtype=np.float64) - p_ref).sum(axis=-1).mean())


# ----------------------------------------------------------------------------------------------------------
# statistics


def mean_se(values) -> dict:
    """{"mean", "se", "n"}: the mean and its standard error std(ddof=1)/sqrt(n) (se None when n < 2)."""
    a = np.asarray(values, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"mean": None, "se": None, "n": 0}
    se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else None
    return {"mean": float(a.mean()), "se": se, "n": int(a.size)}


def summarise(per_unit: dict) -> dict:
    """{metric: mean_se(values over units)} for a dict of per-unit value lists."""
    return {key: mean_se(vals) for key, vals in per_unit.items()}


def damage_ratio(d_random, d_ekv) -> np.ndarray:
    """Elementwise damage(random) / damage(ElasticKV); 1 where both are 0, inf where only ElasticKV's is."""
    r = np.asarray(d_random, dtype=np.float64)
    e = np.asarray(d_ekv, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = r / e
    return np.where((r == 0) & (e == 0), 1.0, out)


def geomean(x) -> float:
    """Geometric mean of positive values."""
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0 or np.any(a <= 0) or not np.all(np.isfinite(a)):
        raise ValueError("geomean needs finite positive values")
    return float(np.exp(np.log(a).mean()))


def bootstrap_geomean_ci(x, n_boot: int, rng: np.random.Generator, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the geometric mean, resampling the values (units) with replacement."""
    logs = np.log(np.asarray(x, dtype=np.float64).ravel())
    idx = rng.integers(0, logs.size, size=(n_boot, logs.size))
    gm = np.exp(logs[idx].mean(axis=1))
    a = (1.0 - level) / 2.0
    return float(np.quantile(gm, a)), float(np.quantile(gm, 1.0 - a))


# ----------------------------------------------------------------------------------------------------------
# selectivity of rows (one cell of one head: rows [m, d])


def peak_to_mean(rows: np.ndarray) -> np.ndarray:
    """SPR: max|x| / mean|x| over the d entries of each row (zeros count in the mean; NaN for an all-zero row).
    1 for a flat row, d for a row with one non-zero entry."""
    a = np.abs(np.asarray(rows, dtype=np.float64))
    m = a.mean(axis=-1)
    return np.divide(a.max(axis=-1), m, out=np.full_like(m, np.nan), where=m > 0)


def kurtosis(rows: np.ndarray) -> np.ndarray:
    """Pearson kurtosis m4 / m2^2 of each row's entries about the row mean (3 for a Gaussian; NaN if constant)."""
    a = np.asarray(rows, dtype=np.float64)
    c = a - a.mean(axis=-1, keepdims=True)
    m2 = (c ** 2).mean(axis=-1)
    m4 = (c ** 4).mean(axis=-1)
    return np.divide(m4, m2 ** 2, out=np.full_like(m2, np.nan), where=m2 > 0)


def gini(rows: np.ndarray) -> np.ndarray:
    """Gini coefficient of |x| per row: sum_ij |a_i - a_j| / (2 d^2 mean a); 0 when all equal, (d-1)/d for one
    non-zero entry (NaN for an all-zero row)."""
    a = np.sort(np.abs(np.asarray(rows, dtype=np.float64)), axis=-1)
    d = a.shape[-1]
    tot = a.sum(axis=-1)
    i = np.arange(1, d + 1, dtype=np.float64)
    num = 2.0 * (a * i).sum(axis=-1) - (d + 1) * tot
    return np.divide(num, d * tot, out=np.full_like(tot, np.nan), where=tot > 0)


def top_energy_fraction(rows: np.ndarray, frac: float = 0.1) -> np.ndarray:
    """Fraction of each row's L2 energy held by its ceil(frac * d) largest-|x| entries (NaN for a zero row)."""
    e = np.asarray(rows, dtype=np.float64) ** 2
    k = max(1, math.ceil(frac * e.shape[-1] - 1e-9))
    top = -np.sort(-e, axis=-1)[..., :k].sum(axis=-1)
    tot = e.sum(axis=-1)
    return np.divide(top, tot, out=np.full_like(tot, np.nan), where=tot > 0)


def block_survivors(rows: np.ndarray, block: int = 32) -> np.ndarray:
    """Non-zeros in each aligned ``block``-value block of each row: int [m, d // block] (partial blocks dropped)."""
    a = np.asarray(rows)
    nb = a.shape[-1] // block
    return (a[..., : nb * block] != 0).reshape(*a.shape[:-1], nb, block).sum(axis=-1)


# ----------------------------------------------------------------------------------------------------------
# tau bands


def band_sums(x: np.ndarray, tau_value: float, edges) -> dict:
    """Sums over the entries of ``x`` in each band [e_i, e_i+1) of |x| / tau: entry count, L1 (sum |x|) and
    L2 (sum x^2) energy. ``edges`` ascending from 0; the last may be inf."""
    a = np.abs(np.asarray(x, dtype=np.float64)).ravel()
    edges = np.asarray(edges, dtype=np.float64)
    if edges[0] != 0 or np.any(np.diff(edges) <= 0):
        raise ValueError("band edges must start at 0 and increase")
    r = a / tau_value if tau_value > 0 else np.full_like(a, np.inf)
    b = np.searchsorted(edges, r, side="right") - 1  # band i: edges[i] <= r < edges[i+1]
    b = np.clip(b, 0, len(edges) - 2)  # r == inf (tau 0) or beyond a finite last edge: last band
    nb = len(edges) - 1
    return {"entries": np.bincount(b, minlength=nb).astype(np.float64),
            "l1": np.bincount(b, weights=a, minlength=nb),
            "l2": np.bincount(b, weights=a * a, minlength=nb)}


def band_fractions(sums: dict) -> dict:
    """The ``band_sums`` normalised to fractions of their totals (each sums to 1)."""
    return {key: (v / v.sum() if v.sum() > 0 else v) for key, v in sums.items()}


# ----------------------------------------------------------------------------------------------------------
# token eviction replay (H2O, ScissorHands, StreamingLLM) on one head; rows sorted by position; tokens with
# position < sink are the sinks, always kept; q and k are [n, d] (the proxy queries are the keys themselves)


def eviction_budget(n: int, kept_fraction: float, n_sink: int) -> int:
    """Tokens kept: round(kept_fraction * n), at least the sinks, at most n."""
    return int(min(n, max(n_sink, round(kept_fraction * n))))


def split_budget(budget: int, n_sink: int, recent_fraction: float) -> tuple[int, int]:
    """(heavy, recent) token counts: the budget left after the sinks, split recent_fraction : rest."""
    rest = budget - n_sink
    if rest < 0:
        raise ValueError(f"budget {budget} is smaller than the {n_sink} sink tokens")
    recent = int(round(recent_fraction * rest))
    return rest - recent, recent


def _replay(q: np.ndarray, k: np.ndarray, pos: np.ndarray, budget: int, sink: int, n_recent: int,
            stride: int, on_attention) -> np.ndarray:
    """Online eviction: tokens arrive ``stride`` at a time; each new query attends (proxy attention) to the
    cached tokens and the earlier new ones; ``on_attention(cand, p, n_visible)`` updates the scores and
    returns them; then, while the cache exceeds ``budget``, the lowest-scored token that is neither a sink
    (position < sink) nor among the ``n_recent`` newest is evicted (ties: the oldest first).
    Returns bool keep [n]: exactly min(n, budget) tokens."""
    n = len(k)
    n_sink = int((np.asarray(pos) < sink).sum())
    if budget < n_sink + n_recent:
        raise ValueError(f"budget {budget} < sink tokens {n_sink} + recent window {n_recent}")
    keep = np.zeros(n, dtype=bool)
    for start in range(0, n, stride):
        end = min(start + stride, n)
        block = np.arange(start, end)
        cand = np.concatenate([np.flatnonzero(keep[:start]), block])
        p = attention(q[block], pos[block], k[cand], pos[cand])
        n_visible = (pos[cand][None, :] < pos[block][:, None]).sum(axis=1)
        score = on_attention(cand, p, n_visible)
        keep[block] = True
        excess = int(keep.sum()) - budget
        if excess > 0:
            cached = np.flatnonzero(keep)
            protected = (pos[cached] < sink) | (cached >= end - n_recent)
            ev = cached[~protected]
            order = np.lexsort((pos[ev], score[ev]))  # lowest score first, then oldest
            keep[ev[order[:excess]]] = False
    return keep


def h2o_keep(q: np.ndarray, k: np.ndarray, pos: np.ndarray, budget: int, sink: int, n_recent: int,
             stride: int = 1) -> np.ndarray:
    """H2O (heavy hitters): a token's score is the attention it has accumulated from all queries so far;
    keeps the sinks, the ``n_recent`` newest tokens and the highest-scored rest, ``budget`` tokens in all."""
    acc = np.zeros(len(k))

    def on_attention(cand, p, n_visible):
        acc[cand] += p.sum(axis=0)
        return acc

    return _replay(q, k, pos, budget, sink, n_recent, stride, on_attention)


def scissorhands_keep(q: np.ndarray, k: np.ndarray, pos: np.ndarray, budget: int, sink: int, n_recent: int,
                      history: int, stride: int = 1) -> np.ndarray:
    """ScissorHands (persistence of importance): a token's score is the number of the last ``history`` queries
    for which it was important, i.e. its attention weight exceeded the uniform level 1 / (number of keys that
    query saw); keeps the sinks, the ``n_recent`` newest tokens and the highest-scored rest."""
    counts = np.zeros(len(k))
    window: deque = deque()

    def on_attention(cand, p, n_visible):
        imp = p > 1.0 / np.maximum(n_visible, 1)[:, None]
        for row in imp:
            hit = cand[row]
            counts[hit] += 1
            window.append(hit)
            if len(window) > history:
                counts[window.popleft()] -= 1
        return counts

    return _replay(q, k, pos, budget, sink, n_recent, stride, on_attention)


def recent_keep(pos: np.ndarray, budget: int, sink: int) -> np.ndarray:
    """StreamingLLM: the sinks (position < sink) and the newest tokens, ``budget`` in all."""
    n = len(pos)
    keep = np.asarray(pos) < sink
    rest = budget - int(keep.sum())
    if rest < 0:
        raise ValueError(f"budget {budget} is smaller than the {int(keep.sum())} sink tokens")
    if rest:
        keep[n - rest:] = True
    return keep


# ----------------------------------------------------------------------------------------------------------
# JSON


def jsonable(obj):
    """Converts numpy scalars/arrays to Python and non-finite floats to None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
