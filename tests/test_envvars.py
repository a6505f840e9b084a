# SPDX-License-Identifier: Apache-2.0
"""The Python mirror of the ELASTICKV_* table equals the C++ declaration, and resolves like the hook."""

from __future__ import annotations

import re

import pytest

from elastickv import envvars, paths

HOOK_SRC = paths.CUDA_HOOK / "tree" / "src" / "llama-elastickv-config.cpp"


def cpp_table() -> list[tuple[str, str, str, str]]:
    src = HOOK_SRC.read_text()
    body = src[src.index("LLAMA_ELASTICKV_VARS[] = {"):]
    body = body[: body.index("};")]
    return re.findall(r'\{\s*"([^"]+)",\s*"([^"]*)",\s*"([^"]*)",\s*"([^"]*)"\s*\}', body)


def cpp_presets() -> dict[str, tuple[float, float]]:
    src = HOOK_SRC.read_text()
    body = src[src.index("EKV_PRESETS[] = {"):]
    body = body[: body.index("};")]
    return {n: (float(k), float(v)) for n, k, v in re.findall(r'\{\s*"([^"]+)",\s*([\d.]+)f,\s*([\d.]+)f\s*\}', body)}


def test_mirror_equals_cpp_table():
    table = cpp_table()
    assert len(table) == 24
    assert [tuple(vars(v).values()) for v in envvars.VARS] == table


def test_presets_equal_cpp():
    assert cpp_presets() == envvars.PRESETS


def test_spec_variables_all_declared():
    spec = {"ELASTICKV", "ELASTICKV_SCALE_K", "ELASTICKV_SCALE_V", "ELASTICKV_SINK", "ELASTICKV_EVICT_EVERY",
            "ELASTICKV_WARM", "ELASTICKV_HEAD_DIM", "ELASTICKV_VERBOSE", "ELASTICKV_PRESET", "ELASTICKV_MODE",
            "ELASTICKV_STATS", "ELASTICKV_DUMP", "ELASTICKV_POLICY", "ELASTICKV_BUDGET", "ELASTICKV_RECENT",
            "ELASTICKV_HEAVY_RATIO", "ELASTICKV_SEED", "ELASTICKV_PYRAMID_BETA", "ELASTICKV_SCOPE", "ELASTICKV_FREE",
            "ELASTICKV_KV_CELLS",
            # issue 14: the kv-cache-compression systems (semantic's K-means, learned's network)
            "ELASTICKV_CLUSTERS", "ELASTICKV_CLUSTER_KEYS", "ELASTICKV_LEARNED_WEIGHTS"}
    assert set(envvars.BY_NAME) == spec


def test_resolve_defaults_preset_and_override():
    assert envvars.resolve({})["scale_k"] == 0.35
    assert envvars.resolve({})["enabled"] is False
    r = envvars.resolve({"ELASTICKV": "1", "ELASTICKV_PRESET": "sweet"})
    assert (r["scale_k"], r["scale_v"]) == (0.45, 0.50)
    r = envvars.resolve({"ELASTICKV_PRESET": "sweet", "ELASTICKV_SCALE_V": "0.1"})
    assert (r["scale_k"], r["scale_v"]) == (0.45, 0.1)
    assert envvars.resolve({"ELASTICKV_PRESET": "k-only"})["scale_v"] == 0.0


@pytest.mark.parametrize("env, var", [
    ({"ELASTICKV": "2"}, "ELASTICKV"),
    ({"ELASTICKV_SCALE_K": "abc"}, "ELASTICKV_SCALE_K"),
    ({"ELASTICKV_SCALE_V": "-1"}, "ELASTICKV_SCALE_V"),
    ({"ELASTICKV_SCALE_K": "nan"}, "ELASTICKV_SCALE_K"),
    ({"ELASTICKV_EVICT_EVERY": "0"}, "ELASTICKV_EVICT_EVERY"),
    ({"ELASTICKV_PRESET": "fast"}, "ELASTICKV_PRESET"),
    ({"ELASTICKV_MODE": "lazy"}, "ELASTICKV_MODE"),
    ({"ELASTICKV_VERBOSE": "3"}, "ELASTICKV_VERBOSE"),
    ({"ELASTICKV_SCALEK": "0.3"}, "ELASTICKV_SCALEK"),
    ({"ELASTICKV_POLICY": "lfu"}, "ELASTICKV_POLICY"),
    ({"ELASTICKV_POLICY": "h2o"}, "ELASTICKV_BUDGET"),
    ({"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "1.5"}, "ELASTICKV_BUDGET"),
    ({"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_PRESET": "sweet"}, "ELASTICKV_PRESET"),
    ({"ELASTICKV_BUDGET": "0.5"}, "ELASTICKV_BUDGET"),
    ({"ELASTICKV_POLICY": "topk_entries", "ELASTICKV_BUDGET": "512"}, "ELASTICKV_BUDGET"),
    ({"ELASTICKV_POLICY": "streaming", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_RECENT": "8"}, "ELASTICKV_RECENT"),
    ({"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_HEAVY_RATIO": "2"}, "ELASTICKV_HEAVY_RATIO"),
    ({"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_SEED": "1"}, "ELASTICKV_SEED"),
    ({"ELASTICKV_SCOPE": "head"}, "ELASTICKV_SCOPE"),  # ElasticKV evicts no cells
    ({"ELASTICKV_POLICY": "topk_entries", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_FREE": "1"}, "ELASTICKV_FREE"),
    ({"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_SCOPE": "layer"}, "ELASTICKV_SCOPE"),
    ({"ELASTICKV_POLICY": "pyramidkv", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_SCOPE": "shared"}, "ELASTICKV_SCOPE"),
    ({"ELASTICKV_POLICY": "streaming", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_FREE": "2"}, "ELASTICKV_FREE"),
    ({"ELASTICKV_KV_CELLS": "-1"}, "ELASTICKV_KV_CELLS"),
    ({"ELASTICKV_KV_CELLS": "1k"}, "ELASTICKV_KV_CELLS"),
])
def test_resolve_refuses_like_the_hook(env, var):
    with pytest.raises(envvars.EnvError, match=var):
        envvars.resolve(env)


def test_resolve_scope_free_and_kv_cells():
    """kv_cells for every policy (0: no cap), scope and free for the token policies only; the other keys as
    before the cap."""
    r = envvars.resolve({})
    assert r["kv_cells"] == 0 and "scope" not in r and "free" not in r
    r = envvars.resolve({"ELASTICKV_POLICY": "topk_entries", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_KV_CELLS": "256"})
    assert r["kv_cells"] == 256 and "scope" not in r
    r = envvars.resolve({"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0.5"})
    assert (r["scope"], r["free"], r["kv_cells"]) == ("head", True, 0)
    r = envvars.resolve({"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_SCOPE": "shared",
                         "ELASTICKV_FREE": "0", "ELASTICKV_KV_CELLS": "384"})
    assert (r["scope"], r["free"], r["kv_cells"]) == ("shared", False, 384)
    assert envvars.resolve({"ELASTICKV_POLICY": "pyramidkv", "ELASTICKV_BUDGET": "0.5",
                            "ELASTICKV_SCOPE": "head"})["scope"] == "head"
    assert envvars.hook_env(policy="streaming", budget="0.5", scope="shared", free=1, kv_cells=320) == {
        "ELASTICKV": "1", "ELASTICKV_POLICY": "streaming", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_SCOPE": "shared",
        "ELASTICKV_FREE": "1", "ELASTICKV_KV_CELLS": "320"}


def test_hook_env_validates():
    assert envvars.hook_env(preset="sweet", evict_every=64) == {
        "ELASTICKV": "1", "ELASTICKV_PRESET": "sweet", "ELASTICKV_EVICT_EVERY": "64"}
    with pytest.raises(envvars.EnvError):
        envvars.hook_env(scale_q=1)
