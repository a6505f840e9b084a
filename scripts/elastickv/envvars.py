# SPDX-License-Identifier: Apache-2.0
"""Python mirror of the ELASTICKV_* table (``LLAMA_ELASTICKV_VARS`` in cuda_hook/tree/src/llama-elastickv.cpp).

The C++ table is the declaration; ``tests/test_envvars.py`` fails if this mirror drifts from it. The harness
never writes raw environment variables by hand: it calls :func:`hook_env` and records :func:`resolve` of
the result in every result file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
)

BY_NAME = {v.name: v for v in VARS}

#: preset -> (scale_k, scale_v), as EKV_PRESETS in llama-elastickv.cpp
PRESETS = {"sweet": (0.45, 0.50), "aggressive": (0.50, 0.50), "k-only": (0.35, 0.00)}
MODES = ("full", "incremental")


class EnvError(ValueError):
    """A value the hook would refuse; the message names the variable and what it accepts."""


def _fail(name: str, value: str, why: str) -> None:
    raise EnvError(f"{name}={value!r} {why}; accepted: {BY_NAME[name].accepts}")


def resolve(env: dict[str, str]) -> dict:
    """The configuration the hook resolves from ``env`` (defaults < preset < explicit scales).

    Validates the context-free rules as the hook does; context-dependent limits (SINK and WARM within
    the context, HEAD_DIM equal to the model's, cache types) are checked by the hook itself.
    """
    for key in env:
        if (key == "ELASTICKV" or key.startswith("ELASTICKV_")) and key not in BY_NAME:
            raise EnvError(f"unknown variable {key}; known variables: {', '.join(BY_NAME)}")

    def get(name: str) -> str:
        return env.get(name, BY_NAME[name].default)

    def integer(name: str, lo: int, hi: int) -> int:
        s = get(name)
        try:
            v = int(s, 10)
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
            v = float(s)
        except ValueError:
            _fail(name, s, "is not a number")
        if math.isnan(v) or math.isinf(v):
            _fail(name, s, "is not a finite number")
        if v < 0:
            _fail(name, s, "is negative")
        if v > 100:
            _fail(name, s, "is out of range")
        return v

    preset = get("ELASTICKV_PRESET")
    if preset != "none" and preset not in PRESETS:
        _fail("ELASTICKV_PRESET", preset, "is not a preset")
    sk, sv = PRESETS.get(preset, (float(BY_NAME["ELASTICKV_SCALE_K"].default), float(BY_NAME["ELASTICKV_SCALE_V"].default)))
    mode = get("ELASTICKV_MODE")
    if mode not in MODES:
        _fail("ELASTICKV_MODE", mode, "is not a mode")
    head_dim = get("ELASTICKV_HEAD_DIM")
    return {
        "enabled": integer("ELASTICKV", 0, 1) == 1,
        "preset": preset,
        "scale_k": scale("ELASTICKV_SCALE_K", sk),
        "scale_v": scale("ELASTICKV_SCALE_V", sv),
        "sink": integer("ELASTICKV_SINK", 0, 2**31 - 1),
        "evict_every": integer("ELASTICKV_EVICT_EVERY", 1, 1048576),
        "warm": integer("ELASTICKV_WARM", 0, 2**31 - 1),
        "head_dim": "auto" if head_dim == "auto" else integer("ELASTICKV_HEAD_DIM", 1, 65536),
        "verbose": integer("ELASTICKV_VERBOSE", 0, 2),
        "mode": mode,
        "stats": env.get("ELASTICKV_STATS"),
        "dump": env.get("ELASTICKV_DUMP"),
    }


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
