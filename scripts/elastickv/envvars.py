# SPDX-License-Identifier: Apache-2.0
"""Python mirror of the ELASTICKV_* table (``LLAMA_ELASTICKV_VARS`` in cuda_hook/tree/src/llama-elastickv-config.cpp).

The C++ table is the declaration; ``tests/test_envvars.py`` fails if this mirror drifts from it. The harness
never writes raw environment variables by hand: it calls :func:`hook_env` and records :func:`resolve` of
the result in every result file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .policies.common import budget_cells, decimal_float, decimal_int, parse_budget


@dataclass(frozen=True)
class Var:
    name: str
    default: str
    accepts: str
    meaning: str


VARS: tuple[Var, ...] = (
    Var("ELASTICKV", "0", "0 or 1", "1 enables the hook"),
    Var("ELASTICKV_SCALE_K", "0.35", "a number in [0, 100]", "key threshold scale"),
    Var("ELASTICKV_SCALE_V", "0.17", "a number in [0, 100]", "value threshold scale"),
    Var("ELASTICKV_SINK", "64", "an integer in [0, context size]", "positions protected at the start of each sequence"),
    Var("ELASTICKV_EVICT_EVERY", "64", "an integer in [1, 1048576]", "tokens between passes"),
    Var("ELASTICKV_WARM", "128", "an integer in [0, context size]", "tokens before the first pass"),
    Var("ELASTICKV_HEAD_DIM", "auto", "auto, or the model's KV head dimension", "KV head dimension; if set it must equal the model's"),
    Var("ELASTICKV_VERBOSE", "0", "0, 1 or 2", "1: one summary line per pass; 2: per layer and head"),
    Var("ELASTICKV_PRESET", "none", "none, sweet, aggressive or k-only",
        "sweet (0.45/0.50), aggressive (0.50/0.50), k-only (0.35/0.00); explicit scales override"),
    Var("ELASTICKV_MODE", "full", "full or incremental", "full: re-threshold the cache each pass; incremental: each cell once"),
    Var("ELASTICKV_STATS", "", "a path to a JSONL file (appended)", "one record per pass, layer, K/V and head"),
    Var("ELASTICKV_DUMP", "", "a directory (created if missing)", "K/V of each layer before and after a pass as .npy, with cell positions"),
    Var("ELASTICKV_POLICY", "elastickv",
        "elastickv, streaming, h2o, scissorhands, pyramidkv, random_tokens, sliding_window, lru, lru_fifo, semantic, "
        "learned, random_entries or topk_entries",
        "what a pass does: ElasticKV thresholding, a token eviction (-inf attention bias per layer and KV head; "
        "needs -fa off) or an element baseline"),
    Var("ELASTICKV_BUDGET", "",
        "a fraction in (0, 1] written with a decimal point (0.5) or as a percentage (50%), or a whole number of "
        "cells (>= 1, token policies only)",
        "every policy but elastickv (required): cells kept per sequence and layer, or the fraction of K/V entries kept"),
    Var("ELASTICKV_RECENT", "auto", "auto, or an integer >= 0",
        "token policies: most recent positions always kept; auto: (1 - HEAVY_RATIO) of the budget after the sinks"),
    Var("ELASTICKV_HEAVY_RATIO", "0.8", "a number in [0, 1]",
        "h2o, scissorhands, pyramidkv, random_tokens, lru: share of the budget after the sinks chosen by priority when "
        "RECENT is auto"),
    Var("ELASTICKV_SEED", "42", "an integer in [0, 9223372036854775807]", "random_tokens, random_entries and semantic: seed of the hash"),
    Var("ELASTICKV_PYRAMID_BETA", "20", "a number in [1, 1000000]",
        "pyramidkv: the top layer keeps budget/beta cells, the bottom 2*budget - budget/beta"),
    Var("ELASTICKV_SCOPE", "head", "head or shared",
        "token policies: head: a keep set per layer and KV head; shared: one keep set per sequence for all layers "
        "and heads (scores summed over them), so every eviction frees a cell"),
    Var("ELASTICKV_FREE", "1", "0 or 1",
        "token policies: 1 frees a cell evicted in every layer and KV head (later tokens reuse it); 0 keeps it "
        "allocated behind the attention bias (logical eviction)"),
    Var("ELASTICKV_KV_CELLS", "0", "0 (the context size), or an integer in [1, context size per sequence]",
        "cells allocated per KV stream: a physical cap, with n_ctx and positions unchanged; needs a token policy "
        "whose evictions free cells (streaming, random_tokens, sliding_window, lru_fifo, or h2o/scissorhands/lru with "
        "ELASTICKV_SCOPE=shared)"),
    Var("ELASTICKV_CLUSTERS", "32", "an integer in [1, 4096]",
        "semantic: K of the K-means over the candidates' keys (the cells nearest the K centroids are kept)"),
    Var("ELASTICKV_CLUSTER_KEYS", "head", "head or mean",
        "semantic: cluster each KV head's own keys (head), or each layer's keys averaged over its KV heads, as the "
        "notebook (mean)"),
    Var("ELASTICKV_LEARNED_WEIGHTS", "", "a path to an MLP weights file (scripts/analysis/train_learned.py)",
        "learned (required): the network that scores each cell's key"),
)

BY_NAME = {v.name: v for v in VARS}

#: preset -> (scale_k, scale_v), as EKV_PRESETS in llama-elastickv-config.cpp
PRESETS = {"sweet": (0.45, 0.50), "aggressive": (0.50, 0.50), "k-only": (0.35, 0.00)}
MODES = ("full", "incremental")
#: ELASTICKV_POLICY values (scripts/elastickv/policies has their numpy definitions)
POLICIES = ("elastickv", "streaming", "h2o", "scissorhands", "pyramidkv", "random_tokens", "random_entries",
            "topk_entries", "sliding_window", "lru", "lru_fifo", "semantic", "learned")
TOKEN_POLICIES = ("streaming", "h2o", "scissorhands", "pyramidkv", "random_tokens", "sliding_window", "lru", "lru_fifo",
                  "semantic", "learned")
#: ELASTICKV_CLUSTER_KEYS values (semantic)
CLUSTER_KEYS = ("head", "mean")
#: token policies that keep no sinks (ELASTICKV_SINK refused; the resolved sink is 0)
NO_SINK_POLICIES = ("sliding_window",)
#: ELASTICKV_SCOPE values (token policies)
SCOPES = ("head", "shared")
_ELASTICKV_ONLY = ("ELASTICKV_PRESET", "ELASTICKV_SCALE_K", "ELASTICKV_SCALE_V", "ELASTICKV_MODE")
_BASELINE_ONLY = ("ELASTICKV_BUDGET", "ELASTICKV_RECENT", "ELASTICKV_HEAVY_RATIO", "ELASTICKV_SEED",
                  "ELASTICKV_PYRAMID_BETA", "ELASTICKV_CLUSTERS", "ELASTICKV_CLUSTER_KEYS", "ELASTICKV_LEARNED_WEIGHTS")


class EnvError(ValueError):
    """A value the hook would refuse; the message names the variable and what it accepts."""


def _fail(name: str, value: str, why: str) -> None:
    raise EnvError(f"{name}={value!r} {why}; accepted: {BY_NAME[name].accepts}")


def resolve(env: dict[str, str]) -> dict:
    """The configuration the hook resolves from ``env`` (defaults < preset < explicit scales).

    Validates the context-free rules as the hook does; context-dependent limits (SINK and WARM within
    the context, HEAD_DIM equal to the model's, cache types; KV_CELLS within the context per sequence, with a
    policy whose evictions free cells and enough cells for the batch, llama-elastickv-cap.cpp) are checked by
    the hook itself. ``kv_cells`` (0: no cap) is resolved for every policy, ``scope`` and ``free`` for the token
    policies only (the others refuse them).
    """
    for key in env:
        if (key == "ELASTICKV" or key.startswith("ELASTICKV_")) and key not in BY_NAME:
            raise EnvError(f"unknown variable {key}; known variables: {', '.join(BY_NAME)}")

    def get(name: str) -> str:
        return env.get(name, BY_NAME[name].default)

    def integer(name: str, lo: int, hi: int) -> int:
        s = get(name)
        try:
            v = decimal_int(s)
        except ValueError:
            _fail(name, s, "is not an integer")
        if not lo <= v <= hi:
            _fail(name, s, "is out of range")
        return v

    def scale(name: str, default: float) -> float:
        if name not in env:
            return default
        s = env[name]
        try:
            v = decimal_float(s)
        except ValueError:
            _fail(name, s, "is not a number")
        if math.isnan(v) or math.isinf(v):
            _fail(name, s, "is not a finite number")
        if v < 0:
            _fail(name, s, "is negative")
        if v > 100:
            _fail(name, s, "is out of range")
        return v

    def path(name: str) -> str | None:
        # whether it can be opened (a file to append to, a directory to create) only the hook sees
        if env.get(name) == "":
            _fail(name, "", "is empty")
        return env.get(name)

    preset = get("ELASTICKV_PRESET")
    if preset != "none" and preset not in PRESETS:
        _fail("ELASTICKV_PRESET", preset, "is not a preset")
    sk, sv = PRESETS.get(preset, (float(BY_NAME["ELASTICKV_SCALE_K"].default), float(BY_NAME["ELASTICKV_SCALE_V"].default)))
    mode = get("ELASTICKV_MODE")
    if mode not in MODES:
        _fail("ELASTICKV_MODE", mode, "is not a mode")
    head_dim = get("ELASTICKV_HEAD_DIM")
    baseline = _resolve_policy(env)
    if baseline["policy"] != "elastickv":
        sk = sv = 0.0
    return baseline | {
        "enabled": integer("ELASTICKV", 0, 1) == 1,
        "preset": preset,
        "scale_k": scale("ELASTICKV_SCALE_K", sk) if baseline["policy"] == "elastickv" else 0.0,
        "scale_v": scale("ELASTICKV_SCALE_V", sv) if baseline["policy"] == "elastickv" else 0.0,
        "sink": 0 if baseline["policy"] in NO_SINK_POLICIES else integer("ELASTICKV_SINK", 0, 2**31 - 1),
        "evict_every": integer("ELASTICKV_EVICT_EVERY", 1, 1048576),
        "warm": integer("ELASTICKV_WARM", 0, 2**31 - 1),
        "head_dim": "auto" if head_dim == "auto" else integer("ELASTICKV_HEAD_DIM", 1, 65536),
        "verbose": integer("ELASTICKV_VERBOSE", 0, 2),
        "mode": mode,
        "stats": path("ELASTICKV_STATS"),
        "dump": path("ELASTICKV_DUMP"),
        "kv_cells": integer("ELASTICKV_KV_CELLS", 0, 2**31 - 1),
    }


def _resolve_policy(env: dict[str, str]) -> dict:
    """ELASTICKV_POLICY, the baselines' budget and the token policies' SCOPE and FREE, refused as the hook
    refuses them (unused variables too)."""
    policy = env.get("ELASTICKV_POLICY", "elastickv")
    if policy not in POLICIES:
        _fail("ELASTICKV_POLICY", policy, "is not a policy")

    def unused(name: str, why: str) -> None:
        if name in env:
            _fail(name, env[name], f"is set but ELASTICKV_POLICY={policy} {why}")

    out = {"policy": policy, "budget": None, "recent": "auto", "heavy_ratio": 0.8, "seed": 42, "pyramid_beta": 20.0}
    token = policy in TOKEN_POLICIES
    if not token:
        unused("ELASTICKV_SCOPE", "evicts no cells")
        unused("ELASTICKV_FREE", "evicts no cells")
    if policy == "elastickv":
        for name in _BASELINE_ONLY:
            unused(name, "does not use it (it sets the baselines' budget)")
        return out
    for name in _ELASTICKV_ONLY:
        unused(name, "does not use it (it sets ElasticKV's thresholds)")
    if "ELASTICKV_BUDGET" not in env:
        raise EnvError(f"ELASTICKV_POLICY={policy} needs ELASTICKV_BUDGET; accepted: {BY_NAME['ELASTICKV_BUDGET'].accepts}")
    text = env["ELASTICKV_BUDGET"]
    try:
        b = parse_budget(text)
    except ValueError:
        _fail("ELASTICKV_BUDGET", text, "is not a budget")
    if not token and b.fraction <= 0:
        _fail("ELASTICKV_BUDGET", text, f"is a cell count, but ELASTICKV_POLICY={policy} keeps a fraction of the K/V entries")
    out["budget"] = b.fraction if b.fraction > 0 else b.cells
    if not token:
        unused("ELASTICKV_RECENT", "zeroes entries, it keeps no recent window")
        unused("ELASTICKV_HEAVY_RATIO", "zeroes entries, it has no heavy hitters")
    if policy != "pyramidkv":
        unused("ELASTICKV_PYRAMID_BETA", "is not pyramidkv")
    if policy in ("streaming", "sliding_window", "lru_fifo"):
        unused("ELASTICKV_RECENT", "keeps the most recent cells of the budget anyway")
        unused("ELASTICKV_HEAVY_RATIO", "has no heavy hitters")
    if policy in NO_SINK_POLICIES:
        unused("ELASTICKV_SINK", "keeps no sinks (the last cells of the budget only)")
    if policy not in ("random_tokens", "random_entries", "semantic"):
        unused("ELASTICKV_SEED", "is not random")
    if policy != "semantic":
        unused("ELASTICKV_CLUSTERS", "is not semantic")
        unused("ELASTICKV_CLUSTER_KEYS", "is not semantic")
    if policy != "learned":
        unused("ELASTICKV_LEARNED_WEIGHTS", "is not learned")
    elif not env.get("ELASTICKV_LEARNED_WEIGHTS"):
        raise EnvError(f"ELASTICKV_POLICY={policy} needs ELASTICKV_LEARNED_WEIGHTS; accepted: "
                       f"{BY_NAME['ELASTICKV_LEARNED_WEIGHTS'].accepts}")
    else:
        out["learned_weights"] = env["ELASTICKV_LEARNED_WEIGHTS"]

    def number(name: str, lo: float, hi: float, default: float) -> float:
        if name not in env:
            return default
        try:
            v = decimal_float(env[name])
        except ValueError:
            _fail(name, env[name], "is not a finite number")
        if math.isnan(v) or math.isinf(v):
            _fail(name, env[name], "is not a finite number")
        if not lo <= v <= hi:
            _fail(name, env[name], "is out of range")
        return v

    def integer(name: str, lo: int, hi: int, default: int) -> int:
        if name not in env:
            return default
        try:
            v = decimal_int(env[name])
        except ValueError:
            _fail(name, env[name], "is not an integer")
        if not lo <= v <= hi:
            _fail(name, env[name], "is out of range")
        return v

    recent = env.get("ELASTICKV_RECENT", "auto")
    out["recent"] = "auto" if recent == "auto" else integer("ELASTICKV_RECENT", 0, 2**31 - 1, 0)
    out["heavy_ratio"] = number("ELASTICKV_HEAVY_RATIO", 0.0, 1.0, 0.8)
    out["seed"] = integer("ELASTICKV_SEED", 0, 2**63 - 1, 42)
    out["pyramid_beta"] = number("ELASTICKV_PYRAMID_BETA", 1.0, 1e6, 20.0)
    out["clusters"] = integer("ELASTICKV_CLUSTERS", 1, 4096, 32)
    keys = env.get("ELASTICKV_CLUSTER_KEYS", "head")
    if keys not in CLUSTER_KEYS:
        _fail("ELASTICKV_CLUSTER_KEYS", keys, "is not a key set")
    out["cluster_keys"] = keys
    if token:
        scope = env.get("ELASTICKV_SCOPE", BY_NAME["ELASTICKV_SCOPE"].default)
        if scope not in SCOPES:
            _fail("ELASTICKV_SCOPE", scope, "is not a scope")
        if scope == "shared" and policy == "pyramidkv":
            _fail("ELASTICKV_SCOPE", scope, "cannot be used with ELASTICKV_POLICY=pyramidkv, whose budgets differ per "
                  "layer (one keep set for all layers would drop them)")
        if scope == "shared" and policy in ("semantic", "learned"):
            _fail("ELASTICKV_SCOPE", scope, f"cannot be used with ELASTICKV_POLICY={policy}, which ranks the keys of "
                  "each layer or KV head")
        out["scope"] = scope
        out["free"] = integer("ELASTICKV_FREE", 0, 1, int(BY_NAME["ELASTICKV_FREE"].default)) == 1
    return out


#: hook settings an experiment row may set (keyword names of :func:`hook_env`); then the baselines' six, then the
#: token policies' cell handling and the physical cap
ROW_KEYS = ("preset", "scale_k", "scale_v", "sink", "mode", "warm",
            "policy", "budget", "recent", "heavy_ratio", "seed", "pyramid_beta",
            "scope", "free", "kv_cells", "clusters", "cluster_keys", "learned_weights")


def budget_text(kept: float) -> str:
    """ELASTICKV_BUDGET for a kept fraction, always with a decimal point (a bare "1" would mean one cell)."""
    return f"{kept:.6f}".rstrip("0").rstrip(".") if kept < 1 else "1.0"


def matched_env(policy: str | None, kept: float | None, elastickv_scales: dict, **settings: object) -> dict[str, str]:
    """ELASTICKV_* variables for ``policy`` at a target kept fraction: ElasticKV takes scale_k = scale_v =
    ``elastickv_scales[kept]`` (it has no budget), every baseline ELASTICKV_BUDGET = kept; None: the hook off."""
    if policy is None:
        return {}
    if policy == "elastickv":
        scale = elastickv_scales.get(kept)
        if scale is None:
            raise EnvError(f"elastickv_scales has no scale for kept={kept}; add one (known: {sorted(elastickv_scales)})")
        return hook_env(scale_k=scale, scale_v=scale, **settings)
    return hook_env(policy=policy, budget=budget_text(kept), **settings)


def hook_env(enabled: bool = True, **settings: object) -> dict[str, str]:
    """ELASTICKV_* variables for a run: ``hook_env(preset="sweet", evict_every=64)``.

    Keyword names are the variable names without the prefix, lower case. Values are validated.
    """
    env = {"ELASTICKV": "1" if enabled else "0"}
    for key, value in settings.items():
        if value is None:
            continue
        name = "ELASTICKV_" + key.upper()
        if name not in BY_NAME:
            raise EnvError(f"unknown setting {key!r}; known: {', '.join(v.name[10:].lower() for v in VARS[1:])}")
        env[name] = str(value)
    resolve(env)
    return env


def frees_all(resolved: dict) -> bool:
    """Every eviction of this resolved configuration frees its cell (``llama_elastickv_frees_all``): a token policy
    with FREE=1 that is position-only (streaming, random_tokens, sliding_window, lru_fifo) or runs with SCOPE=shared
    (not pyramidkv)."""
    from . import policies  # the policies' definitions (the package imports this module's budget parser)

    p = resolved.get("policy")
    if p not in TOKEN_POLICIES or not resolved.get("free", True):
        return False
    P = policies.policy(p)
    if P.layer_budget is not policies.common.uniform_budget:
        return False
    # position-only policies evict the same cells in every layer and head; the others only with a shared scope
    return (P.score == "none" and not (P.clusters or P.learned)) or resolved.get("scope") == "shared"


def min_kv_cells(budget: str, n_ctx_seq: int, n_batch: int, evict_every: int = 64, warm: int = 128,
                 seqs_per_stream: int = 1) -> int:
    """The smallest ELASTICKV_KV_CELLS the hook accepts (llama-elastickv-cap.cpp, which states why it suffices):
    seqs_per_stream * max(B + EVICT_EVERY - 1, max(WARM, EVICT_EVERY) - 1) + n_batch, with B the budget at the
    logical length n_ctx_seq, and never more than n_ctx_seq (the context size always suffices).
    tests/test_real_memory.py checks that the hook refuses one cell less."""
    B = budget_cells(parse_budget(budget), n_ctx_seq)
    per = max(B + evict_every - 1, max(warm, evict_every) - 1)
    return min(seqs_per_stream * per + n_batch, n_ctx_seq)
