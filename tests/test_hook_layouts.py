# SPDX-License-Identifier: Apache-2.0
"""Every KV cache layout (issue 13, item 5): the hook covers every attention layer of the model, in whichever cache
it lives, and says so ("N of M attention layers (one KV cache)", or the full and the sliding-window cache of an iSWA
model with their layers), or refuses the model when the context is created, with a message; never a silent partial
coverage. Tiny random models written with the gguf package (scripts/gpu/write_model.py, seconds, no download):
llama (one cache) and gemma2 (iSWA: layers alternate between a sliding-window cache and a full one: ElasticKV and
the element baselines cover both, token policies are refused), mamba (recurrent: no KV cache at all) and jamba
(hybrid: Mamba layers beside attention layers)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

import numpy as np

from elastickv import dump, paths, tools
from elastickv import reference as ref

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


def iswa_run(tiny, tmp_path, extra: dict[str, str] | None = None):
    stats, dumps = tmp_path / "stats.jsonl", tmp_path / "dumps"
    r = run(tiny["gemma2"], ON | {"ELASTICKV_STATS": str(stats), "ELASTICKV_DUMP": str(dumps)} | (extra or {}))
    assert r.returncode == 0, r.stderr[-2000:]
    records = [json.loads(line) for line in stats.read_text().splitlines()]
    return r, records, dumps


def test_iswa_model_every_attention_layer_covered_in_both_caches(tiny, tmp_path):
    """gemma2: layer 0 in a sliding-window cache of 16 positions, layer 1 in the full cache. The echo says 2 of 2
    layers and names both caches; the stats have records of both; each cache's pass zeroes what the numpy reference
    zeroes, over the sequence's cells in the full cache and over the cells the window holds in the other."""
    r, records, dumps = iswa_run(tiny, tmp_path)
    assert ("elastickv: cache K f16 V f16, 2 of 2 attention layers (full cache: 1 layer, 256 cells; sliding-window "
            "cache (window 16): 1 layer, ") in r.stderr
    config = [x for x in records if x["record"] == "config"]
    assert len(config) == 1 and config[0]["n_layer"] == 2 and config[0]["swa_layers"] == [0]
    heads = [x for x in records if x["record"] == "head"]
    assert {(h["cache"], h["layer"]) for h in heads} == {("full", 1), ("swa", 0)}
    for cache in ("full", "swa"):
        assert sum(h["n"] - h["nnz"] for h in heads if h["cache"] == cache) > 0  # each cache had entries zeroed
    # the sliding-window cache's passes saw the window only; the full cache's every position of the sequence
    n_obs = {(h["cache"], h["pass"]): h["n_obs"] / 32 for h in heads if h["kv"] == "k" and h["head"] == 0}
    last = max(p for _, p in n_obs)
    assert n_obs[("swa", last)] == 16 and n_obs[("full", last)] > 100

    passes = {cache: dump.passes(dumps, cache) for cache in dump.CACHES}
    assert passes["full"] == passes["swa"] and len(passes["full"]) >= 10  # both caches pass at the same ubatches
    for cache in dump.CACHES:
        for ctx, p in passes[cache]:
            d = dump.load(dumps, ctx, p, cache)
            assert d.manifest["cache"] == cache and d.layers == ([0] if cache == "swa" else [1])
            pos_max = d.manifest["seqs"][0]["pos_max"]
            held = dump.owned_cells(dump.kv_cells(dumps, ctx, p, cache), 0)
            want = held[held[:, 2] > pos_max - 16] if cache == "swa" else held
            if cache == "swa" and pos_max >= 16:
                assert len(want) == 16 and len(held) > len(want)  # the cache still holds cells outside the window
            for kind, scale in (("k", 0.35), ("v", 0.17)):
                cells = d.cells[kind]
                assert np.array_equal(cells[:, 1:3], want[:, 1:3]), f"{cache} pass {p} {kind}: the cells listed"
                process = cells[:, 2] >= 4  # sinks by position
                assert np.array_equal((cells[:, 3] & ref.PROCESS) != 0, process)
                before, after = d.values(d.layers[0], kind, "before"), d.values(d.layers[0], kind, "after")
                mask = ref.threshold_dump(before, cells[:, 3] & ref.GROUP_MASK, process, scale)
                assert np.array_equal(np.where(mask, 0.0, before), after), f"{cache} pass {p} {kind}"


def test_iswa_model_with_a_scale_that_zeroes_nothing_is_the_hook_off(tiny):
    off = run(tiny["gemma2"], None)
    on = run(tiny["gemma2"], ON | {"ELASTICKV_SCALE_K": "1e-20", "ELASTICKV_SCALE_V": "1e-20", "ELASTICKV_VERBOSE": "1"})
    assert off.returncode == 0 and on.returncode == 0, on.stderr[-2000:]
    assert "elastickv: sliding-window cache: pass" in on.stderr  # passes ran in both caches
    assert on.stdout == off.stdout


def test_iswa_model_element_baseline_covers_both_caches(tiny, tmp_path):
    _, records, _ = iswa_run(tiny, tmp_path, {"ELASTICKV_POLICY": "topk_entries", "ELASTICKV_BUDGET": "0.5"})
    entries = [x for x in records if x["record"] == "entries"]
    assert {(x["cache"], x["layer"]) for x in entries} == {("full", 1), ("swa", 0)}
    assert all(x["nnz_obs"] < x["n_obs"] for x in entries)


@pytest.mark.parametrize("policy", ["streaming", "h2o"])
def test_iswa_model_token_policy_is_refused_with_its_layer_split(tiny, policy):
    off = run(tiny["gemma2"], None)
    assert off.returncode == 0, off.stderr[-2000:]  # the model itself runs
    r = run(tiny["gemma2"], ON | {"ELASTICKV_POLICY": policy, "ELASTICKV_BUDGET": "0.5"})
    assert r.returncode == 1, r.stderr[-2000:]  # llama-completion's exit when the context cannot be created
    assert (f"elastickv: ELASTICKV_POLICY={policy} is refused for this model: it splits its attention layers between "
            "two KV caches (iSWA): 1 of 2 attention layers in a sliding-window cache of 16 positions, the others in a "
            "full cache, and token policies evict cells of one cache only") in r.stderr
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
            "hook sparsifies attention KV caches, not recurrent states, and would leave part of the model untouched; run "
            "it with ELASTICKV unset or 0") in r.stderr
    assert "elastickv: cache K" not in r.stderr
