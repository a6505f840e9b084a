# SPDX-License-Identifier: Apache-2.0
"""Every KV cache layout (issue 13, item 5): the hook covers every attention layer of a model whose attention layers
live in one KV cache and says so ("N of M attention layers (one KV cache)"), or refuses the model when the context
is created, with a message; never a silent partial coverage. Tiny random models written with the gguf package
(scripts/gpu/write_model.py, seconds, no download): llama (one cache) and gemma2 (iSWA: layers alternate between a
sliding-window cache and a full one), mamba (recurrent: no KV cache at all) and jamba (hybrid: Mamba layers beside
attention layers)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from elastickv import paths, tools

PROMPT = "The quick brown fox jumps over the lazy dog, and then it runs back home again. " * 2


def write_model(out: Path, arch: str) -> Path:
    spec = importlib.util.spec_from_file_location("write_model", paths.ROOT / "scripts/gpu/write_model.py")
    wm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wm)
    wm.write(out, "tiny", "f16", arch=arch)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("layouts")
    return {arch: write_model(d / f"tiny-{arch}.gguf", arch) for arch in ("llama", "gemma2", "mamba", "jamba")}


def run(model: Path, env: dict[str, str] | None) -> subprocess.CompletedProcess:
    binary = paths.binary("llama-completion")
    if not binary.exists():
        pytest.fail(f"{binary} is not built: run `make build-test`")
    return subprocess.run([str(binary), "-m", str(model), "-p", PROMPT, "-n", "8", "-c", "128", "-b", "8", "-ub", "8",
                           "-t", "1", "--no-warmup", "-no-cnv", "--temp", "0"], cwd=paths.ROOT,
                          env=tools.clean_env(env), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace", timeout=120)


ON = {"ELASTICKV": "1", "ELASTICKV_WARM": "8", "ELASTICKV_SINK": "4", "ELASTICKV_EVICT_EVERY": "8"}


def test_one_cache_every_attention_layer_covered_and_said(tiny, tmp_path):
    stats = tmp_path / "stats.jsonl"
    r = run(tiny["llama"], ON | {"ELASTICKV_STATS": str(stats)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "elastickv: cache K f16 V f16, 2 of 2 attention layers (one KV cache) x 2 KV heads" in r.stderr
    layers = {json.loads(line)["layer"] for line in stats.read_text().splitlines() if '"head"' in line}
    assert layers == {0, 1}  # passes ran over both layers


def test_iswa_model_is_refused_with_its_layer_split(tiny):
    off = run(tiny["gemma2"], None)
    assert off.returncode == 0, off.stderr[-2000:]  # the model itself runs
    r = run(tiny["gemma2"], ON)
    assert r.returncode != 0 and r.returncode > 0  # an exit, not a signal
    assert ("elastickv: ELASTICKV=1 but this model splits its attention layers between two KV caches (iSWA): "
            "1 of 2 attention layers in a sliding-window cache of 16 positions, the others in a full cache; the hook "
            "covers models with one attention KV cache only") in r.stderr
    assert "elastickv: cache K" not in r.stderr  # no coverage echo: nothing ran


def test_recurrent_model_is_refused_with_a_message(tiny):
    off = run(tiny["mamba"], None)
    assert off.returncode == 0, off.stderr[-2000:]  # the model itself runs
    r = run(tiny["mamba"], ON)
    assert r.returncode == 1, r.stderr[-2000:]  # llama-completion's exit when the context cannot be created
    assert ("elastickv: ELASTICKV=1 but this model is recurrent (Mamba, RWKV, ...): its memory is a per-sequence "
            "state, not an attention KV cache the hook could sparsify; run it with ELASTICKV unset or 0") in r.stderr
    assert "elastickv: cache K" not in r.stderr


def test_hybrid_model_is_refused_with_a_message(tiny):
    off = run(tiny["jamba"], None)
    assert off.returncode == 0, off.stderr[-2000:]  # the model itself runs
    r = run(tiny["jamba"], ON)
    assert r.returncode == 1, r.stderr[-2000:]
    assert ("elastickv: ELASTICKV=1 but this model's memory is hybrid (recurrent layers beside attention layers); the "
            "hook covers models with one attention KV cache only") in r.stderr
    assert "elastickv: cache K" not in r.stderr
