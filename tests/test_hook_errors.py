# SPDX-License-Identifier: Apache-2.0
"""Every bad ELASTICKV_* value and unsupported cache type makes the real tool exit non-zero with a message
that names the variable (or cache type) and what is accepted. Nothing is silently ignored.
To add a case, add a row to BAD_ENV or BAD_CACHE."""

from __future__ import annotations

import pytest

ON = {"ELASTICKV": "1"}

# env, expected fragment of the message
BAD_ENV = [
    ({"ELASTICKV": "2"}, "ELASTICKV='2' is out of range; accepted: 0 or 1"),
    ({"ELASTICKV": "yes"}, "ELASTICKV='yes' is not an integer; accepted: 0 or 1"),
    (ON | {"ELASTICKV_SCALE_K": "abc"}, "ELASTICKV_SCALE_K='abc' is not a number; accepted: a number in [0, 100]"),
    (ON | {"ELASTICKV_SCALE_K": "-0.5"}, "ELASTICKV_SCALE_K='-0.5' is negative"),
    (ON | {"ELASTICKV_SCALE_V": "nan"}, "ELASTICKV_SCALE_V='nan' is not a finite number"),
    (ON | {"ELASTICKV_SCALE_V": "inf"}, "ELASTICKV_SCALE_V='inf' is not a finite number"),
    (ON | {"ELASTICKV_SCALE_V": ""}, "ELASTICKV_SCALE_V='' is not a number"),
    # the numbers' grammar (decimal only; found by tests/test_fuzz_env.py): no hex, spaces or underscores
    (ON | {"ELASTICKV_SCALE_K": "0x10"}, "ELASTICKV_SCALE_K='0x10' is not a number"),
    (ON | {"ELASTICKV_SCALE_K": "1_0"}, "ELASTICKV_SCALE_K='1_0' is not a number"),
    (ON | {"ELASTICKV_SINK": " 8"}, "ELASTICKV_SINK=' 8' is not an integer"),
    (ON | {"ELASTICKV_SINK": "100000"}, "ELASTICKV_SINK='100000' is larger than the context (512 tokens per sequence)"),
    (ON | {"ELASTICKV_SINK": "-1"}, "ELASTICKV_SINK='-1' is out of range; accepted: an integer in [0, context size]"),
    (ON | {"ELASTICKV_WARM": "4096"}, "ELASTICKV_WARM='4096' is larger than the context"),
    (ON | {"ELASTICKV_EVICT_EVERY": "0"}, "ELASTICKV_EVICT_EVERY='0' is out of range; accepted: an integer in [1, 1048576]"),
    (ON | {"ELASTICKV_EVICT_EVERY": "6.4"}, "ELASTICKV_EVICT_EVERY='6.4' is not an integer"),
    (ON | {"ELASTICKV_HEAD_DIM": "128"}, "ELASTICKV_HEAD_DIM='128' does not match the model (layer 0: K head dim 64, V head dim 64)"),
    (ON | {"ELASTICKV_HEAD_DIM": "big"}, "ELASTICKV_HEAD_DIM='big' is not an integer; accepted: auto, or the model's KV head dimension"),
    (ON | {"ELASTICKV_VERBOSE": "3"}, "ELASTICKV_VERBOSE='3' is out of range; accepted: 0, 1 or 2"),
    (ON | {"ELASTICKV_PRESET": "fast"}, "ELASTICKV_PRESET='fast' is not a preset; accepted: none, sweet, aggressive or k-only"),
    (ON | {"ELASTICKV_MODE": "lazy"}, "ELASTICKV_MODE='lazy' is not a mode; accepted: full or incremental"),
    (ON | {"ELASTICKV_STATS": "no/such/dir/s.jsonl"}, "ELASTICKV_STATS='no/such/dir/s.jsonl' cannot be opened for appending"),
    (ON | {"ELASTICKV_DUMP": "requirements.txt"}, "ELASTICKV_DUMP='requirements.txt' is not a directory"),
    (ON | {"ELASTICKV_SCALEK": "0.3"}, "unknown variable ELASTICKV_SCALEK; known variables: ELASTICKV, ELASTICKV_SCALE_K"),
    # the baselines (ELASTICKV_POLICY): every budget variable validated, unused ones refused
    (ON | {"ELASTICKV_POLICY": "lfu"}, "ELASTICKV_POLICY='lfu' is not a policy; accepted: elastickv, streaming, h2o"),
    (ON | {"ELASTICKV_POLICY": "h2o"}, "ELASTICKV_POLICY=h2o needs ELASTICKV_BUDGET; accepted: a fraction in (0, 1]"),
    (ON | {"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "1.5"}, "ELASTICKV_BUDGET='1.5' is not a fraction in (0, 1]"),
    (ON | {"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "150%"}, "ELASTICKV_BUDGET='150%' is not a percentage"),
    (ON | {"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0"}, "ELASTICKV_BUDGET='0' is out of range"),
    (ON | {"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_PRESET": "sweet"},
     "ELASTICKV_PRESET='sweet' is set but ELASTICKV_POLICY=h2o does not use it"),
    (ON | {"ELASTICKV_BUDGET": "0.5"}, "ELASTICKV_BUDGET='0.5' is set but ELASTICKV_POLICY=elastickv does not use it"),
    (ON | {"ELASTICKV_POLICY": "topk_entries", "ELASTICKV_BUDGET": "512"},
     "ELASTICKV_BUDGET='512' is a cell count, but ELASTICKV_POLICY=topk_entries keeps a fraction"),
    (ON | {"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_HEAVY_RATIO": "1.2"},
     "ELASTICKV_HEAVY_RATIO='1.2' is out of range; accepted: a number in [0, 1]"),
    (ON | {"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_RECENT": "-4"},
     "ELASTICKV_RECENT='-4' is out of range"),
    (ON | {"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_SEED": "3"},
     "ELASTICKV_SEED='3' is set but ELASTICKV_POLICY=h2o is not random"),
    (ON | {"ELASTICKV_POLICY": "pyramidkv", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_PYRAMID_BETA": "0.5"},
     "ELASTICKV_PYRAMID_BETA='0.5' is out of range"),
    # real memory: scope, freeing, the physical cap (its context-dependent refusals: tests/test_real_memory.py)
    (ON | {"ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_SCOPE": "layer"},
     "ELASTICKV_SCOPE='layer' is not a scope; accepted: head or shared"),
    (ON | {"ELASTICKV_SCOPE": "shared"}, "ELASTICKV_SCOPE='shared' is set but ELASTICKV_POLICY=elastickv evicts no cells"),
    (ON | {"ELASTICKV_POLICY": "pyramidkv", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_SCOPE": "shared"},
     "ELASTICKV_SCOPE='shared' cannot be used with ELASTICKV_POLICY=pyramidkv"),
    (ON | {"ELASTICKV_POLICY": "streaming", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_FREE": "2"},
     "ELASTICKV_FREE='2' is out of range; accepted: 0 or 1"),
    (ON | {"ELASTICKV_POLICY": "topk_entries", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_FREE": "1"},
     "ELASTICKV_FREE='1' is set but ELASTICKV_POLICY=topk_entries evicts no cells"),
    (ON | {"ELASTICKV_KV_CELLS": "-5"}, "ELASTICKV_KV_CELLS='-5' is out of range; accepted: 0 (the context size)"),
    (ON | {"ELASTICKV_KV_CELLS": "1k"}, "ELASTICKV_KV_CELLS='1k' is not an integer"),
    # a bad value is an error even with the hook off
    ({"ELASTICKV": "0", "ELASTICKV_MODE": "lazy"}, "ELASTICKV_MODE='lazy' is not a mode"),
]

# cache flags, variable named in the message, cache type named
BAD_CACHE = [
    (["-fa", "on", "-ctk", "q4_1", "-ctv", "q4_1"], "ELASTICKV_SCALE_K", "q4_1"),
    (["-fa", "on", "-ctk", "f16", "-ctv", "q5_1"], "ELASTICKV_SCALE_V", "q5_1"),
    (["-fa", "on", "-ctk", "iq4_nl", "-ctv", "f16"], "ELASTICKV_SCALE_K", "iq4_nl"),
]


@pytest.mark.parametrize("env, message", BAD_ENV, ids=[m.split("=")[0].split(" ")[-1] + str(i) for i, (_, m) in enumerate(BAD_ENV)])
def test_bad_env_value_is_an_error(llama, env, message):
    r = llama.perplexity([], env=env, chunks=1)
    assert r.rc != 0, "the tool must exit non-zero"
    assert message in r.log, r.log[-2000:]
    assert "Final estimate" not in r.log


@pytest.mark.parametrize("flags, var, ctype", BAD_CACHE, ids=[c for _, _, c in BAD_CACHE])
def test_cache_type_without_exact_zero_is_refused(llama, flags, var, ctype):
    r = llama.perplexity(flags, env=ON | {"ELASTICKV_PRESET": "sweet"}, chunks=1)
    assert r.rc != 0
    assert f"elastickv: {var} > 0 needs a" in r.log and f"is {ctype}; accepted cache types: f32, f16, bf16, q8_0, q4_0, q5_0" in r.log


def test_k_only_preset_accepts_any_v_cache(llama):
    """SCALE_V = 0 leaves V untouched, so a V type without an exact zero is fine."""
    r = llama.perplexity(["-fa", "on", "-ctk", "f16", "-ctv", "q5_1"], env=ON | {"ELASTICKV_PRESET": "k-only"}, chunks=1)
    assert r.rc == 0, r.log[-2000:]
    assert "Final estimate" in r.log


def test_settings_without_enable_warn(llama):
    r = llama.perplexity([], env={"ELASTICKV_PRESET": "sweet"}, chunks=1)
    assert r.rc == 0
    assert "elastickv: ELASTICKV_PRESET set but ELASTICKV is not 1: the hook is off" in r.log
