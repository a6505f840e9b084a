# SPDX-License-Identifier: Apache-2.0
"""The numbers of every archived run record equal what its raw log says, re-parsed with the drivers' own
parsers (nothing here runs llama.cpp):

* perplexity: ppl.log_metrics of the log (logparse.kv_cache, flash_attn, kld_stats or final_ppl/chunk_ppls,
  the resident ratio) and ppl.hook_metrics of the archived ELASTICKV_STATS file (stats.summarize or
  summarize_policy) rebuild the whole metrics object, in the driver's key order;
* niah: the generation, timings and KV cache of the llama-completion log (f5_niah.parse_generation, perf,
  logparse), the score, and the needle the cell's settings define (f5_niah.needle_for);
* routing: the generation and KV size of the log, the item's answer in the suite's items file and the score;
* bench: every llama-bench row equals its raw log, and the overheads equal decode_overhead.summarize of them;
  the same for the throughput runs of Table 6 and its aggregate's rows;
* every llama.cpp log shows the hook's configuration echo exactly when the record says the hook was on, with
  the record's mode, preset, scales, sink, EVICT_EVERY and WARM, and the baseline echo exactly when a baseline
  policy ran, with its policy, budget, RECENT, HEAVY_RATIO, SEED, PYRAMID_BETA (and SCOPE, FREE, KV_CELLS in
  logs of the hook with the physical cap).
Comparisons are exact: the records were produced by these parsers from these logs. Records made before the
physical cap lack the log's real-memory metrics (REAL_MEMORY) and the measured peak_rss_mib."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import defaultdict
from functools import lru_cache

import pytest

from elastickv import logparse, paths, ppl, pypi, routing_suite, stats, tools

sys.path.insert(0, str(paths.ROOT / "scripts" / "eval"))
import f5_niah  # noqa: E402
import throughput_tables  # noqa: E402


def _module(rel: str):
    spec = importlib.util.spec_from_file_location(rel.rsplit("/", 1)[-1][:-3], paths.ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


decode_overhead = _module("scripts/bench/decode_overhead.py")


@lru_cache(maxsize=1)
def records() -> dict[str, list[tuple[str, dict]]]:
    """{"<kind> <folder>": [(path relative to results/, record)]} of every archived run record."""
    out = defaultdict(list)
    for p in sorted(paths.RESULTS.rglob("*.json")):
        obj = json.loads(p.read_text())
        if obj.get("schema_version") == 1 and obj.get("kind") in ("perplexity", "niah", "routing", "bench"):
            out[f"{obj['kind']} {p.parent.relative_to(paths.RESULTS)}"].append((str(p.relative_to(paths.RESULTS)), obj))
    return dict(out)


def groups(kind: str) -> list[str]:
    return [g for g in records() if g.startswith(kind + " ")]


def log_of(rec: dict) -> str:
    with tools.open_text(paths.ROOT / rec["log"], errors="replace") as f:  # as tools.run read it (compressed or not)
        return f.read()


def differences(want: dict, rec: dict) -> list[str]:
    """The metrics whose recorded value differs from ``want``: compared as the JSON they are written as, so
    exactly (a NaN equals a NaN, -0.0 differs from 0.0, 1 from 1.0)."""
    return [f"{k}: log {want[k]!r}, record {rec['metrics'].get(k, '<missing>')!r}"
            for k in want if k not in rec["metrics"] or json.dumps(rec["metrics"][k]) != json.dumps(want[k])]


def echo_differences(rec: dict, text: str) -> list[str]:
    """The hook's configuration echo against the record's resolved configuration."""
    echo, cfg = logparse.elastickv_echo(text), rec["elastickv"]
    if (echo is not None) != cfg["enabled"]:
        return [f"hook echo {'present' if echo else 'absent'} but enabled={cfg['enabled']}"]
    if echo is None:
        return []
    want = {"mode": cfg["mode"], "preset": cfg["preset"], "sink": str(cfg["sink"]),
            "evict_every": str(cfg["evict_every"]), "warm": str(cfg["warm"]),
            "scale_k": f"{cfg['scale_k']:.4g}", "scale_v": f"{cfg['scale_v']:.4g}"}  # the hook prints %.4g
    diffs = [f"echo {k}={echo.get(k)}, record {v}" for k, v in want.items() if echo.get(k) != v]
    policy, name = logparse.elastickv_policy(text), cfg.get("policy", "elastickv")
    if (policy is not None) != (name != "elastickv"):
        return diffs + [f"baseline echo {'present' if policy else 'absent'} but policy={name}"]
    if policy is None:
        return diffs
    budget = cfg["budget"] if isinstance(cfg["budget"], int) else float(f"{cfg['budget']:.6f}")  # std::to_string
    want = {"policy": name, "budget": budget, "recent": cfg["recent"], "seed": cfg["seed"],
            "heavy_ratio": float(f"{cfg['heavy_ratio']:.3g}"), "pyramid_beta": float(f"{cfg['pyramid_beta']:.3g}")}
    want |= {k: cfg.get(k) for k in ("scope", "free", "kv_cells") if k in policy}  # the hook with the cap
    return diffs + [f"baseline echo {k}={policy[k]!r}, record {v!r}" for k, v in want.items() if policy[k] != v]


def check(group: str, expected) -> None:
    """Asserts that expected(rel, rec, log) (a list of differences) is empty for every record of the group."""
    bad = []
    for rel, rec in records()[group]:
        text = log_of(rec)
        diffs = expected(rel, rec, text) + echo_differences(rec, text)
        bad += [f"{rel}: {d}" for d in diffs]
    assert not bad, f"{len(bad)} differences, e.g.\n" + "\n".join(bad[:10])


def test_every_archived_record_is_covered():
    n = {kind: sum(len(records()[g]) for g in groups(kind)) for kind in ("perplexity", "niah", "routing", "bench")}
    assert n["perplexity"] > 100 and n["niah"] > 200 and n["routing"] > 300 and n["bench"] >= 1, n


#: KLD percentiles that records written before logparse read right-aligned lines lack (every archived one)
LOW = {"5.0%", "1.0%", "0.1%"}
#: the log's real-memory metrics (ppl.log_metrics), which records made before the physical cap lack
REAL_MEMORY = ("kv_real_mib", "kv_cells", "n_ctx", "kv_bytes_per_token", "kv_buffer_mib", "hook_state_mib")
#: what stats.summarize_policy added on 2026-12-04, which records of token policies made before lack
EVICTED = "evicted_tokens_per_chunk"


@pytest.mark.parametrize("group", groups("perplexity"))
def test_perplexity_metrics_equal_their_log_and_stats(group):
    def expected(rel, rec, text):
        want = ppl.log_metrics(text, rec["settings"]["kld"])
        if not any(k in rec["metrics"] for k in REAL_MEMORY):  # made before the physical cap: the rest must be equal
            want = {k: v for k, v in want.items() if k not in REAL_MEMORY}
        if "kld_quantiles" in want and set(want["kld_quantiles"]) - set(rec["metrics"]["kld_quantiles"]) == LOW:
            # written before logparse read the right-aligned percentiles (" 5.0%   KLD:"): the rest must be equal
            want["kld_quantiles"] = {k: v for k, v in want["kld_quantiles"].items() if k not in LOW}
        s = rec["settings"]  # the log ran what the settings asked
        asked = [want["kv_types"] == [s["cache_type_k"], s["cache_type_v"]],
                 s["chunks"] is None or want["chunks_scored"] == s["chunks"],
                 s["flash_attn"] == "auto" or want["flash_attn"] == (s["flash_attn"] == "on")]
        if not all(asked):
            return [f"the log does not show the cache types, chunks and flash attention of the settings: {asked}"]
        archived = rec["metrics"].get("stats")
        if rec["elastickv"]["enabled"] and archived and archived.startswith("results/"):
            _, recs = stats.read(paths.ROOT / archived)
            want |= ppl.hook_metrics(recs, rec["elastickv"].get("policy", "elastickv")) | {"stats": archived}
            if EVICTED not in rec["metrics"]:  # made before the figure existed: the rest must be equal
                want.pop(EVICTED, None)
        elif not rec["elastickv"]["enabled"]:
            want |= ppl.hook_metrics(None, "elastickv")
        else:  # stats kept outside the archive: the log's part only
            return differences(want, rec)
        if "peak_rss_mib" in rec["metrics"]:  # measured by ppl.run, not in the log
            want["peak_rss_mib"] = rec["metrics"]["peak_rss_mib"]
        if json.dumps(want) != json.dumps(rec["metrics"]):  # every metric, in the driver's order
            return differences(want, rec) or [f"metrics {list(rec['metrics'])} not in the driver's order {list(want)}"]
        return []

    check(group, expected)


@pytest.mark.parametrize("group", groups("niah"))
def test_niah_metrics_equal_their_log_and_settings(group):
    def expected(rel, rec, text):
        s = rec["settings"]
        n_prompt, generated, stop = f5_niah.parse_generation(text)
        kv = logparse.kv_cache(text)
        city, number = f5_niah.needle_for(s, s["length"], s["depth"])
        want = {"prompt_tokens": n_prompt, "generated": generated, "stop": stop,
                "correct": f5_niah.is_correct(generated, rec["metrics"]["answer"]),
                "kv_mib": kv.mib, "kv_types": [kv.k_type, kv.v_type], "flash_attn": logparse.flash_attn(text),
                "hadamard_rotation": {"k": kv.rot_k, "v": kv.rot_v}, **f5_niah.perf(text),
                "length_target": s["length"], "depth": s["depth"], "city": city, "answer": number,
                "needle": s["needle"].format(city=city, number=number), "question": s["question"].format(city=city)}
        return differences(want, rec)

    check(group, expected)


@lru_cache(maxsize=None)
def items(rel: str, sha256: str) -> dict[str, dict]:
    path = paths.ROOT / rel
    assert pypi.sha256_of(path) == sha256, f"{rel} is not the items file the records were made with"
    return {it["id"]: it for it in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize("group", groups("routing"))
def test_routing_metrics_equal_their_log_and_items(group):
    def expected(rel, rec, text):
        item = items(rec["data"]["file"], rec["data"]["sha256"])[rec["settings"]["item"]]
        n_prompt, generated, stop = f5_niah.parse_generation(text)
        want = {"prompt_tokens": n_prompt, "generated": generated, "stop": stop, "answer": item["answer"],
                "correct": routing_suite.score(generated, item["answer"]), "kv_mib": logparse.kv_cache(text).mib}
        return differences(want, rec)

    check(group, expected)


def test_bench_rows_equal_their_logs_and_overheads_their_rows():
    bench = [rec for g in groups("bench") for _, rec in records()[g]]
    assert bench
    for rec in bench:
        runs = rec["metrics"]["runs"]
        for r in runs:
            assert r["log"].startswith(rec["log"] + "/")
            assert decode_overhead.bench_rows(log_of(r)) == [r["row"]], r["log"]
        # records since the bytes floor was added carry it, computed from the rows and the logs' KV size lines
        floored = any("floor" in e for e in rec["metrics"]["overhead"].values())
        for r in runs:
            if floored:
                kv = logparse.kv_cache(log_of(r))
                assert r["kv"] == {"mib": kv.mib, "cells": kv.cells}, r["log"]
            if "passes" in r:
                assert r["passes"] == [{"pos_max": p["pos_max"], "ms": p["ms"]}
                                       for p in logparse.elastickv_passes(log_of(r))], r["log"]
        ee = rec["elastickv"]["evict_every"] if floored else None
        want = json.loads(json.dumps(decode_overhead.summarize(runs, rec["settings"]["depths"], ee)))
        assert rec["metrics"]["overhead"] == want


THROUGHPUT_RUNS = sorted((paths.RESULTS / "throughput" / "runs").glob("*.json"))


def test_throughput_runs_equal_their_logs_and_the_table_its_runs():
    saved = {}
    for p in THROUGHPUT_RUNS:
        run = json.loads(p.read_text())
        assert throughput_tables.bench_rows(log_of(run)) == [run["row"]], run["log"]
        saved[(run["kind"], run["size"], run["round"], run["variant"])] = run
    agg = json.loads((paths.RESULTS / "throughput" / "throughput.json").read_text())
    runs = agg["data"]["runs"]
    assert {(r["kind"], r["size"], r["round"], r["variant"]): r for r in runs} == saved
    assert agg["data"]["rows"] == json.loads(json.dumps(throughput_tables.summarize(runs, agg["config"])))
