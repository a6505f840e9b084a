# SPDX-License-Identifier: Apache-2.0
"""The result schemas reject broken files: for every record kind (each of its layouts: hook off, ElasticKV,
token and element policies, KL divergence or not) and for every aggregate script, one archived file (or, for
LongBench-v2, which has none, the driver's own summary of synthetic answers) with one defect at a time: metrics
or data empty, a number of the wrong type, out of its range, NaN or infinite where it must be finite, a
required metric missing, a metric of another layout present, a date-time that is not one. Every defect here
was accepted by the schemas before issue 10 (metrics and data unchecked, date-time not enforced)."""

from __future__ import annotations

import json
import random
import sys
from functools import lru_cache

import pytest

from elastickv import envvars, logparse, paths, policies, schema

sys.path.insert(0, str(paths.ROOT / "scripts" / "eval"))
import longbench_v2_eval as lb  # noqa: E402

NAN, INF = float("nan"), float("inf")
DELETE = object()  # as a value: remove the key
M = "*"  # in a path: the first key of a dict (a model name, a depth)


@lru_cache(maxsize=1)
def archive() -> dict[str, str]:
    """{path relative to results/: text} of every record and aggregate."""
    out = {}
    for p in sorted(paths.RESULTS.rglob("*.json")):
        text = p.read_text()
        if '"schema_version": 1' in text[:200]:
            out[str(p.relative_to(paths.RESULTS))] = text
    return out


@lru_cache(maxsize=None)
def first(pred) -> str:
    """The first archived file ``pred`` holds for (results/-relative path)."""
    for rel, text in archive().items():
        obj = json.loads(text)
        if pred(obj):
            return rel
    raise LookupError("no archived file matches")


def policy(r: dict) -> str:
    return r["elastickv"].get("policy", "elastickv") if r["elastickv"]["enabled"] else "off"


def rec(kind: str, pol: str, kld: object = "any"):
    return lambda r: (r["kind"] == kind and policy(r) == pol
                      and (kld == "any" or r["settings"].get("kld", "none") == kld))


#: one archived record per layout
RECORDS = {
    "perplexity-off-base": rec("perplexity", "off", "base"),
    "perplexity-off-compare": rec("perplexity", "off", "compare"),
    "perplexity-elastickv-compare": rec("perplexity", "elastickv", "compare"),
    "perplexity-elastickv-plain": rec("perplexity", "elastickv", None),
    "perplexity-h2o": rec("perplexity", "h2o"),
    "perplexity-streaming": rec("perplexity", "streaming"),
    "perplexity-topk_entries": rec("perplexity", "topk_entries"),
    "niah-off": rec("niah", "off"),
    "niah-elastickv": rec("niah", "elastickv"),
    "niah-h2o": rec("niah", "h2o"),
    "routing-off": rec("routing", "off"),
    "routing-elastickv": rec("routing", "elastickv"),
    "routing-h2o": rec("routing", "h2o"),
    "routing-streaming": rec("routing", "streaming"),
    "bench": lambda r: r["kind"] == "bench" and "full" in next(iter(r["metrics"]["overhead"].values())),  # decode_overhead, not --cap
    "perplexity-off-capped": rec("perplexity", "off", "base"),
    "perplexity-h2o-capped": rec("perplexity", "h2o"),
}

#: what records made since the physical KV cap (ELASTICKV_KV_CELLS) add to an archived one (none is archived yet):
#: {case: {section: keys}}
CAPPED = {
    "perplexity-off-capped": {"metrics": {"kv_real_mib": 11.25, "kv_cells": 512, "n_ctx": 512,
                                          "kv_bytes_per_token": 23040.0, "kv_buffer_mib": 11.25,
                                          "hook_state_mib": None, "peak_rss_mib": 312.5},
                              "elastickv": {"kv_cells": 0}},
    "perplexity-h2o-capped": {"metrics": {"kv_real_mib": 5.62, "kv_cells": 256, "n_ctx": 512,
                                          "kv_bytes_per_token": 11509.76, "kv_buffer_mib": 5.62,
                                          "hook_state_mib": 0.47, "peak_rss_mib": 298.0, "resident_cells": 0.45,
                                          "union_kept_cells": 0.45, "freed_cells": 1200, "max_used_cells": 250},
                              "elastickv": {"scope": "shared", "free": True, "kv_cells": 256}},
}

#: defects every record must be refused for: (label, path, value); DELETE removes the key
RECORD_DEFECTS = [
    ("metrics-empty", ("metrics",), {}),
    ("metric-unknown", ("metrics", "banana"), 1.0),
    ("started-yesterday", ("started",), "yesterday"),
    ("started-no-timezone", ("started",), "2026-11-22T20:12:28"),
    ("finished-no-time", ("finished",), "2026-11-22"),
    ("finished-month-13", ("finished",), "2026-13-02T10:00:00+00:00"),
    ("nan-in-settings", ("settings", "banana"), NAN),
]

#: per layout: a numeric metric, and the defects of its own rules
NUMBER = {"bench": ("metrics", "overhead", M, "full", "overhead_pct_mean")}
SPECIFIC = {
    "perplexity-off-base": [
        ("kld-without-compare", ("metrics", "kld"), {"value": 0.0, "stderr": 0.0}),
        ("ppl-negative", ("metrics", "ppl", "value"), -3.0),
        ("ppl-below-1", ("metrics", "ppl", "value"), 0.5),
        ("ppl-nan", ("metrics", "ppl", "value"), NAN),
        ("ppl-stderr-negative", ("metrics", "ppl", "stderr"), -0.1),
        ("ppl-missing", ("metrics", "ppl"), DELETE),
        ("chunks-zero", ("metrics", "chunks_scored"), 0),
        ("chunks-float", ("metrics", "chunks_scored"), 10.0),
        ("kv_types-unknown", ("metrics", "kv_types"), ["f16", "f8"]),
        ("resident-zero", ("metrics", "resident"), 0.0),
    ],
    "perplexity-off-compare": [
        ("kld-missing", ("metrics", "kld"), DELETE),
        ("kld-negative", ("metrics", "kld", "value"), -0.1),
        ("same_top_p-above-100", ("metrics", "same_top_p_pct", "value"), 100.5),
        ("rms_dp-string", ("metrics", "rms_dp_pct", "value"), "banana"),
        ("kld_quantiles-empty", ("metrics", "kld_quantiles"), {}),
        ("kld_quantile-nan", ("metrics", "kld_quantiles", "Median"), NAN),
        ("hook-off-sparsity", ("metrics", "sparsity_k_all"), 0.3),
        ("hook-off-nominal", ("metrics", "nominal"), 1.5),
        ("hook-off-stats", ("metrics", "stats"), "results/x.stats.jsonl.xz"),
    ],
    "perplexity-elastickv-compare": [
        ("sparsity-above-1", ("metrics", "sparsity_k_all"), 1.5),
        ("sparsity-negative", ("metrics", "sparsity_v_region"), -0.1),
        ("sparsity-null-with-scale", ("metrics", "sparsity_v_all"), None),
        ("nominal-below-1", ("metrics", "nominal"), 0.9),
        ("nominal-infinite", ("metrics", "nominal"), INF),
        ("bitmap-above-16", ("metrics", "bitmap"), 17.0),
        ("bitmap-null", ("metrics", "bitmap"), None),
        ("hist-32-bins", ("metrics", "hist", "k"), [0] * 32),
        ("hist-negative", ("metrics", "hist", "v", 0), -1),
        ("per_layer-sparsity", ("metrics", "per_layer", 0, "sparsity"), 1.5),
        ("n_passes-zero", ("metrics", "n_passes"), 0),
        ("stats-missing", ("metrics", "stats"), DELETE),
        ("kept_cells-present", ("metrics", "kept_cells"), 0.5),
        ("kv_mib-negative", ("metrics", "kv_mib"), -1.0),
    ],
    "perplexity-elastickv-plain": [
        ("hist-missing", ("metrics", "hist"), DELETE),
        ("ppl_base-without-compare", ("metrics", "ppl_base"), {"value": 20.0, "stderr": 1.0}),
    ],
    "perplexity-h2o": [
        ("kept_cells-missing", ("metrics", "kept_cells"), DELETE),
        ("kept_cells-zero", ("metrics", "kept_cells"), 0.0),
        ("kept_per_layer-above-1", ("metrics", "kept_per_layer", "0"), 1.5),
        ("kept_per_layer-key", ("metrics", "kept_per_layer", "layer0"), 0.5),
        ("kept_cells_per_chunk-nan", ("metrics", "kept_cells_per_chunk", 0), NAN),
        ("bitmap-present", ("metrics", "bitmap"), 1.2),
        ("sparsity-null", ("metrics", "sparsity_k_all"), None),
    ],
    "perplexity-streaming": [
        ("hist-present", ("metrics", "hist"), {"k": [0] * 33, "v": [0] * 33}),
        ("real-memory-partial", ("metrics", "kv_real_mib"), 11.25),  # the log's real-memory metrics come together
        ("cell-use-partial", ("metrics", "resident_cells"), 0.5),
        ("scope-unknown", ("elastickv", "scope"), "layer"),
    ],
    "perplexity-off-capped": [
        ("hook_state_mib-with-hook-off", ("metrics", "hook_state_mib"), 0.5),
        ("kv_cells-zero", ("metrics", "kv_cells"), 0),
        ("kv_cells-float", ("metrics", "kv_cells"), 512.0),
        ("n_ctx-missing", ("metrics", "n_ctx"), DELETE),
        ("kv_bytes_per_token-zero", ("metrics", "kv_bytes_per_token"), 0.0),
        ("kv_buffer_mib-negative", ("metrics", "kv_buffer_mib"), -1.0),
        ("kv_real_mib-nan", ("metrics", "kv_real_mib"), NAN),
        ("peak_rss_mib-zero", ("metrics", "peak_rss_mib"), 0.0),
        ("peak_rss_mib-infinity", ("metrics", "peak_rss_mib"), INF),
        ("scope-without-token-policy", ("elastickv", "scope"), "head"),
        ("free-without-token-policy", ("elastickv", "free"), True),
        ("config-kv_cells-negative", ("elastickv", "kv_cells"), -1),
    ],
    "perplexity-h2o-capped": [
        ("hook_state_mib-null", ("metrics", "hook_state_mib"), None),
        ("hook_state_mib-negative", ("metrics", "hook_state_mib"), -0.5),
        ("resident_cells-above-1", ("metrics", "resident_cells"), 1.5),
        ("union_kept_cells-zero", ("metrics", "union_kept_cells"), 0.0),
        ("freed_cells-negative", ("metrics", "freed_cells"), -1),
        ("max_used_cells-zero", ("metrics", "max_used_cells"), 0),
        ("max_used_cells-missing", ("metrics", "max_used_cells"), DELETE),
        ("kv_buffer_mib-missing", ("metrics", "kv_buffer_mib"), DELETE),
        ("scope-unknown", ("elastickv", "scope"), "layer"),
        ("free-string", ("elastickv", "free"), "1"),
        ("config-kv_cells-float", ("elastickv", "kv_cells"), 256.5),
        ("pyramidkv-shared", ("elastickv", "policy"), "pyramidkv"),
    ],
    "perplexity-topk_entries": [
        ("kept_entries-missing", ("metrics", "kept_entries"), DELETE),
        ("kept_entries-above-1", ("metrics", "kept_entries"), 1.2),
        ("kept_cells-present", ("metrics", "kept_cells"), 0.5),
    ],
    "niah-off": [
        ("passes", ("metrics", "passes"), 3),
        ("stats", ("metrics", "stats"), "build/cache/x.jsonl"),
        ("sparsity", ("metrics", "sparsity_v_all"), 0.2),
    ],
    "niah-elastickv": [
        ("stats_sha256-missing", ("metrics", "stats_sha256"), DELETE),
        ("stats_sha256-bad", ("metrics", "stats_sha256"), "xyz"),
        ("depth-above-1", ("metrics", "depth"), 1.5),
        ("stop-unknown", ("metrics", "stop"), "maybe"),
        ("needle_tokens-short", ("metrics", "needle_tokens"), [3]),
        ("correct-string", ("metrics", "correct"), "yes"),
        ("prompt_tokens-negative", ("metrics", "prompt_tokens"), -5),
        ("at_answer-empty", ("metrics", "at_answer"), {}),
        ("at_answer-sparsity", ("metrics", "at_answer", "sparsity_k_region"), 2.0),
        ("wall_s-nan", ("metrics", "wall_s"), NAN),
        ("kept_cells-present", ("metrics", "kept_cells"), 0.5),
    ],
    "niah-h2o": [
        ("bitmap-number", ("metrics", "bitmap"), 1.2),
        ("kept_cells-missing", ("metrics", "kept_cells"), DELETE),
        ("at_answer-kept_cells", ("metrics", "at_answer", "kept_cells"), 0.0),
        ("element-policy", ("elastickv", "policy"), "topk_entries"),
    ],
    "routing-off": [
        ("ger-present", ("metrics", "ger"), 0.1),
        ("passes-present", ("metrics", "passes_before_answer"), 2),
        ("answer_tokens-empty", ("metrics", "answer_tokens"), []),
    ],
    "routing-elastickv": [
        ("element_ger-missing", ("metrics", "element_ger_max"), DELETE),
        ("element_ger-above-1", ("metrics", "element_ger_mean"), 1.5),
        ("ger-present", ("metrics", "ger"), 0.0),
        ("no-pass-but-figures", ("metrics", "passes_before_answer"), 0),
    ],
    "routing-h2o": [
        ("head_consensus-missing", ("metrics", "head_consensus"), DELETE),
        ("head_consensus-zero", ("metrics", "head_consensus"), 0.0),
        ("ger-missing", ("metrics", "ger"), DELETE),
        ("ger-above-1", ("metrics", "ger"), 1.5),
        ("element-figure-present", ("metrics", "kept_entries_k"), 0.5),
        ("passes-missing", ("metrics", "passes_before_answer"), DELETE),
    ],
    "routing-streaming": [("head_consensus-present", ("metrics", "head_consensus"), 0.7)],
    "bench": [
        ("rounds-zero", ("metrics", "overhead", "*", "full", "rounds"), 0),
        ("std-negative", ("metrics", "overhead", "*", "incremental", "overhead_pct_std"), -1.0),
        ("overhead-below-minus-100", ("metrics", "overhead", "*", "full", "overhead_pct_min"), -150.0),
        ("ns_per_token-zero", ("metrics", "overhead", "*", "ns_per_token_off", 0), 0.0),
        ("depth-key", ("metrics", "overhead", "deep"), {}),
        ("row-avg_ns-string", ("metrics", "runs", 0, "row", "avg_ns"), "banana"),
        ("row-test_time", ("metrics", "runs", 0, "row", "test_time"), "yesterday"),
        ("run-variant", ("metrics", "runs", 0, "variant"), "half"),
        ("runs-missing", ("metrics", "runs"), DELETE),
        ("data-not-null", ("data",), {"file": "data/x", "sha256": "0" * 64}),
    ],
}
SPECIFIC = {case: [("number-banana", NUMBER.get(case, ("metrics", "kv_mib")), "banana"),
                   ("number-nan", NUMBER.get(case, ("metrics", "kv_mib")), NAN),
                   ("number-infinity", NUMBER.get(case, ("metrics", "kv_mib")), INF),
                   ("number-missing", NUMBER.get(case, ("metrics", "kv_mib")), DELETE), *SPECIFIC.get(case, [])]
            for case in RECORDS}

AGGREGATES = {
    "ppl_tables": "results_all.json", "head_to_head": "head_to_head.json", "real_memory": "real_memory.json",
    "f5_niah": "niah/smollm2-135m.json",
    "f5_niah-policies": "niah_policies/smollm2-135m.json", "routing_sweep": "routing_sweep.json",
    "throughput_tables": "throughput/throughput.json", "f1_ppl_analysis": "ppl_vs_accuracy.json",
    "f1_ppl_analysis-kv_heads": "kv_heads_vs_ppl.json", "f1_deep_analysis": "ppl/paired_chunks.json",
    "f7_compression_proof": "f7_compression_proof.json", "random_vs_ekv": "ablation_random_vs_ekv_results.json",
    "simulate_attention_haze": "attention_entropy_results.json", "f2_spr_real_kv": "f2_spr_real_kv_results.json",
    "eviction_replay": "supplementary/eviction_replay.json", "tau_band_energy": "supplementary/tau_band_energy.json",
    "longbench_v2_eval": None,
}
AGGREGATE_DEFECTS = [
    ("data-null", ("data",), None),
    ("data-empty", ("data",), {}),
    ("data-list", ("data",), []),
    ("data-unknown-key", ("data", "banana"), 1),
    ("generated-yesterday", ("generated",), "yesterday"),
    ("generated-no-timezone", ("generated",), "2026-11-22T20:12:28.5"),
    ("config-nan", ("config", "banana"), NAN),
]
AGG_SPECIFIC = {  # paths inside data
    "ppl_tables": [
        ("ppl-string", ("entries", 0, "ppl", "value"), "banana"),
        ("ppl-negative", ("entries", 0, "ppl", "value"), -1.0),
        ("sparsity-above-1", ("entries", 1, "sparsity_k"), 1.5),
        ("kld-missing", ("entries", 0, "kld"), DELETE),
        ("per_chunk-nan", ("entries", 1, "per_chunk", 0, "kld"), NAN),
        ("hist-short", ("entries", 1, "hist", "k"), [1]),
    ],
    "head_to_head": [
        ("kept-above-1", ("entries", 0, "kept"), 1.5),
        ("policy-unknown", ("entries", 0, "policy"), "lfu"),
        ("kld-nan", ("entries", 0, "kld", "value"), NAN),
        ("baseline-kv_mib", ("baselines", M, "kv_mib"), -1.0),
        ("baselines-missing", ("baselines",), DELETE),
    ],
    "real_memory": [  # entries[0] is the first compared run of the first panel: f16 alone (group cap, method none)
        ("kv_real_mib-zero", ("entries", 0, "kv_real_mib"), 0.0),
        ("kld-nan", ("entries", 0, "kld", "value"), NAN),
        ("group-unknown", ("entries", 0, "group"), "logical"),
        ("cap-without-flash-attn", ("entries", 0, "flash_attn"), False),
        ("none-with-budget", ("entries", 0, "budget"), 0.5),
        ("pending-string", ("panels", 0, "pending"), "none"),
        ("panels-missing", ("panels",), DELETE),
    ],
    "f5_niah": [
        ("depth-above-1", ("cells", 0, "depth"), 1.5),
        ("correct-negative", ("scores", "baseline", "correct"), -1),
        ("grid-string", ("grid", "baseline", 0, 0), "yes"),
        ("wall_s-nan", ("wall_s", "baseline"), NAN),
        ("cells-missing", ("cells",), DELETE),
    ],
    "f5_niah-policies": [("at_answer-kept_cells", ("cells", 2, "at_answer", "kept_cells"), 0.0)],
    "routing_sweep": [
        ("accuracy-above-1", ("summary", 0, "accuracy"), 1.5),
        ("ger-nan", ("runs", 1, "ger"), NAN),
        ("pearson-above-1", ("pearson_ger_error", "streaming"), 1.5),
        ("pearson-infinity", ("pearson_ger_error", "streaming"), INF),
        ("pearson-string", ("pearson_ger_error", "streaming"), "banana"),
        ("items-zero", ("items",), 0),
    ],
    "throughput_tables": [
        ("tokens_per_s-negative", ("rows", 0, "tokens_per_s"), -1.0),
        ("overhead-below-minus-100", ("rows", 1, "overhead_pct", "mean"), -150.0),
        ("avg_ns-zero", ("runs", 0, "row", "avg_ns"), 0),
        ("kind-unknown", ("rows", 0, "kind"), "train"),
    ],
    "f1_ppl_analysis": [
        ("spearman-above-1", ("correlations", "spearman_dppl_kld"), 2.0),
        ("spearman-infinity", ("correlations", "spearman_dppl_kld"), INF),
        ("top1-above-100", ("rows", 0, "same_top_p_pct"), 101.0),
        ("kld-nan", ("rows", 0, "kld"), NAN),
    ],
    "f1_ppl_analysis-kv_heads": [
        ("kv_heads-zero", ("rows", 0, "kv_heads"), 0),
        ("sparsity-nan", ("rows", 0, "sparsity_k"), NAN),
    ],
    "f1_deep_analysis": [
        ("frac-above-1", ("rows", 0, "frac_chunks_worse"), 1.5),
        ("ci-one-bound", ("rows", 0, "ci95_normal_pct"), [1.0]),
        ("se-negative", ("rows", 0, "se_delta_nll"), -0.1),
        ("z-nan", ("rows", 0, "z"), NAN),
    ],
    "f7_compression_proof": [
        ("bitmap-above-16", ("rows", 0, "bitmap"), 17.0),
        ("nominal-below-1", ("rows", 0, "nominal"), 0.5),
        ("kld-negative", ("rows", 1, "kld"), -0.5),
    ],
    "random_vs_ekv": [
        ("sparsity-above-1", ("models", M, "presets", "sweet", "sparsity_region", "k", "mean"), 1.5),
        ("geomean-negative", ("models", M, "presets", "sweet", "ratio", "energy_k", "geomean"), -1.0),
        ("per_unit-nan", ("models", M, "presets", "sweet", "damage", "energy_k", "elastickv_per_unit", 0), NAN),
        ("untyped-nan", ("models", M, "banana"), NAN),
    ],
    "simulate_attention_haze": [
        ("entropy_norm-above-1", ("models", M, "points", 0, "elastickv", "entropy_norm", "mean"), 1.5),
        ("n-negative", ("models", M, "dense", "entropy", "n"), -1),
        ("points-missing", ("models", M, "points"), DELETE),
    ],
    "f2_spr_real_kv": [
        ("zero_frac-above-1", ("models", M, "tensors", "k", "before", "zero_frac", "mean"), 2.0),
        ("mismatches-negative", ("models", M, "hook_vs_reference_mismatches", "k"), -1),
        ("hist-nan", ("models", M, "tensors", "v", "after", "block_nnz_hist", 0), NAN),
    ],
    "eviction_replay": [
        ("kept_fraction-above-1", ("models", M, "budgets", 0, "kept_fraction"), 1.5),
        ("se-negative", ("models", M, "methods", "h2o", "energy_k", "se"), -1.0),
    ],
    "tau_band_energy": [
        ("share-above-1", ("models", M, "tensors", "k", "pooled", "entries", 0), 1.5),
        ("edge-infinity", ("edges", 6), INF),
        ("seconds-negative", ("seconds", M), -1.0),
    ],
    "longbench_v2_eval": [
        ("truncated-above-100", ("rows", "baseline", "truncated_pct"), 101.0),
        ("same_pred-negative", ("vs_baseline", "sweet", "same_pred_pct", "mean"), -1.0),
        ("accuracy-string", ("rows", "baseline", "per_seed", M, "overall", "accuracy"), "banana"),
        ("nan", ("rows", "sweet", "hook", "passes_mean"), NAN),
    ],
}
AGG_SPECIFIC = {k: [(lbl, ("data",) + p, v) for lbl, p, v in cases] for k, cases in AGG_SPECIFIC.items()}


def longbench_aggregate() -> dict:
    """A LongBench-v2 aggregate around the driver's own summary of synthetic answers (no archived run exists)."""
    rng = random.Random(0)
    plan = {42: ["a", "b", "c"], 123: ["a", "d"]}
    recs = {}
    for row in ("baseline", "sweet"):
        for seed, ids in plan.items():
            for i in ids:
                pred = rng.choice(["A", "B", None])
                recs[("m", row, seed, i)] = {
                    "domain": rng.choice(["D1", "D2"]), "difficulty": "easy", "length": "short", "correct": pred == "A",
                    "pred": pred, "correct_lenient": pred != "B", "pred_lenient": pred, "response": str(pred),
                    "truncated": rng.random() < 0.5, "prompt_tokens": 300, "passes": 3 if row == "sweet" else 0,
                    "last_pass": {"k_zero_pct": 30.0, "v_zero_pct": 28.0, "nominal": 1.4} if row == "sweet" else None}
    cfg = {"rows": [{"name": "baseline"}, {"name": "sweet", "preset": "sweet"}], "max_ctx": {"m": 320}}
    data = lb.summarize("m", cfg, recs, plan, 6, {"source": "file", "file": "tests/data/x.jsonl", "sha256": "0" * 64})
    base = json.loads(archive()["results_all.json"])
    return base | {"artifact": "Tables 7-8", "script": "scripts/eval/longbench_v2_eval.py", "data": data,
                   "config": {"version": 1, "config_file": "configs/experiments/table7_longbench.yaml"}}


def load(case: str, table: dict) -> dict:
    if table is AGGREGATES:
        return longbench_aggregate() if AGGREGATES[case] is None else json.loads(archive()[AGGREGATES[case]])
    obj = json.loads(archive()[first(RECORDS[case])])
    for section, keys in CAPPED.get(case, {}).items():
        obj[section] |= keys
    return obj


def mutate(obj: dict, path: tuple, value: object) -> dict:
    """``obj`` with ``path`` set to ``value`` (DELETE: removed); ``*`` in a path is the first key of a dict."""
    node = obj
    for k in path[:-1]:
        node = node[next(iter(node)) if k == M else k]
    last = next(iter(node)) if path[-1] == M else path[-1]
    if value is DELETE:
        assert last in node, f"{path}: nothing to delete"
        del node[last]
    else:
        node[last] = value
    return obj


RECORD_CASES = [(c, *d) for c in RECORDS for d in RECORD_DEFECTS + SPECIFIC[c]]
AGGREGATE_CASES = [(c, *d) for c in AGGREGATES for d in AGGREGATE_DEFECTS + AGG_SPECIFIC.get(c, [])]


@pytest.mark.parametrize("case", list(RECORDS))
def test_the_unbroken_record_is_valid(case):
    assert schema.errors(load(case, RECORDS), schema.RECORD) == []


@pytest.mark.parametrize("case", list(AGGREGATES))
def test_the_unbroken_aggregate_is_valid(case):
    assert schema.errors(load(case, AGGREGATES), schema.AGGREGATE) == []


@pytest.mark.parametrize("case,label,path,value", RECORD_CASES, ids=[f"{c[0]}-{c[1]}" for c in RECORD_CASES])
def test_record_with_a_defect_is_refused(case, label, path, value):
    obj = mutate(load(case, RECORDS), path, value)
    assert schema.first_error(obj, schema.RECORD), f"{case}: {label} was accepted"


@pytest.mark.parametrize("case,label,path,value", AGGREGATE_CASES, ids=[f"{c[0]}-{c[1]}" for c in AGGREGATE_CASES])
def test_aggregate_with_a_defect_is_refused(case, label, path, value):
    obj = mutate(load(case, AGGREGATES), path, value)
    assert schema.first_error(obj, schema.AGGREGATE), f"{case}: {label} was accepted"


#: intermediate files (results/SCHEMA.md): (file, schema, defects); before issue 10 only their keys were checked
INTERMEDIATE_CASES = [
    (file, sid, *d)
    for file, sid, defects in [
        ("quickstart/smollm2-135m-c512-n10/table.json", schema.QUICKSTART_TABLE, [
            ("ppl-string", ("rows", 0, "ppl", "value"), "banana"),
            ("sparsity-above-1", ("rows", 1, "sparsity_k"), 1.5),
            ("resident-nan", ("rows", 3, "resident"), NAN),
            ("chunks-zero", ("meta", "chunks"), 0),
            ("meta-nan", ("meta", "banana"), NAN),
            ("rows-empty", ("rows",), []),
        ]),
        ("throughput/runs/decode1024_r0_off.json", schema.THROUGHPUT_RUN, [
            ("avg_ns-negative", ("row", "avg_ns"), -1),
            ("size-zero", ("size",), 0),
            ("kind-unknown", ("kind",), "train"),
            ("test_time-yesterday", ("row", "test_time"), "yesterday"),
            ("samples-nan", ("row", "samples_ts", 0), NAN),
        ]),
    ]
    for d in defects
]


@pytest.mark.parametrize("file,sid,label,path,value", INTERMEDIATE_CASES,
                         ids=[f"{c[0].split('/')[0]}-{c[2]}" for c in INTERMEDIATE_CASES])
def test_intermediate_file_with_a_defect_is_refused(file, sid, label, path, value):
    obj = json.loads((paths.RESULTS / file).read_text())
    assert schema.errors(obj, sid) == []
    assert schema.first_error(mutate(obj, path, value), sid), f"{file}: {label} was accepted"


def test_documented_nan_is_accepted_and_only_there():
    agg = json.loads(archive()["routing_sweep.json"])
    assert any(v != v for v in agg["data"]["pearson_ger_error"].values())  # the archive holds the documented NaN
    agg["data"]["pearson_ger_error"]["streaming"] = NAN
    assert schema.errors(agg, schema.AGGREGATE) == []
    agg["data"]["summary"][0]["accuracy"] = NAN
    assert schema.errors(agg, schema.AGGREGATE)
    rec = load("perplexity-off-compare", RECORDS)
    for key in ("ln_ppl_ratio", "kld", "same_top_p_pct", "rms_dp_pct"):  # the uncertainties of the KLD block
        assert schema.errors(mutate(json.loads(json.dumps(rec)), ("metrics", key, "stderr"), NAN), schema.RECORD) == []
        assert schema.errors(mutate(json.loads(json.dumps(rec)), ("metrics", key, "value"), NAN), schema.RECORD)
    for key in ("ppl", "ppl_base"):
        assert schema.errors(mutate(json.loads(json.dumps(rec)), ("metrics", key, "stderr"), NAN), schema.RECORD)


def test_a_one_chunk_kld_run_of_an_avx2_machine_is_a_valid_record():
    """llama-perplexity on an AMD EPYC prints the uncertainties of a one-chunk hook-off run as -nan and its mean
    KLD as -0.000001 (tests/data/logs): the record ppl.run makes of such a log is valid."""
    k = logparse.kld_stats((paths.ROOT / "tests/data/logs/perplexity_kld_hookoff_1chunk_amd_epyc.log").read_text())
    rec = load("perplexity-off-compare", RECORDS)
    pair = {"ppl": k.ppl, "ppl_base": k.ppl_base, "ln_ppl_ratio": k.ln_ratio, "kld": k.kld,
            "same_top_p_pct": k.same_top_p, "rms_dp_pct": k.rms_dp}
    # the statistics block as ppl.log_metrics reads it (the log keeps no KV-cache line)
    rec["metrics"] |= {key: {"value": v, "stderr": e} for key, (v, e) in pair.items()}
    rec["metrics"] |= {"kld_quantiles": k.kld_quantiles, "chunks_scored": len(k.per_chunk)}
    assert rec["metrics"]["ln_ppl_ratio"]["stderr"] != rec["metrics"]["ln_ppl_ratio"]["stderr"]  # NaN
    assert rec["metrics"]["kld"]["value"] < 0
    assert schema.errors(json.loads(json.dumps(rec)), schema.RECORD) == []


def test_date_time_checker():
    good = ["2026-11-22T20:12:28+00:00", "2026-11-22T20:12:28Z", "2026-11-22T20:12:28.123456-05:30",
            "2026-11-22T20:12:28.5+01:00"]
    bad = ["yesterday", "2026-11-22T20:12:28", "2026-11-22", "2026-11-22 20:12:28+00:00", "2026-02-30T10:00:00Z",
           "2026-11-22T25:00:00Z", "2026-11-22T20:12:28+0000", ""]
    assert all(schema.is_date_time(s) for s in good)
    assert not any(schema.is_date_time(s) for s in bad)


def test_cell_use_only_with_a_token_policy():
    """The evict_pass figures (stats.summarize_policy) belong to token policies: the whole group is refused on a
    record of the hook off, ElasticKV or an element policy."""
    group = ("resident_cells", "union_kept_cells", "freed_cells", "max_used_cells")
    cell_use = {k: CAPPED["perplexity-h2o-capped"]["metrics"][k] for k in group}
    for case in ("perplexity-off-capped", "perplexity-elastickv-compare", "perplexity-topk_entries"):
        obj = load(case, RECORDS)
        obj["metrics"] |= cell_use
        errors = schema.errors(obj, schema.RECORD)
        assert any("False schema" in e for e in errors), (case, errors)
        assert not any("dependency" in e for e in errors), (case, errors)


def test_policy_lists_match_the_harness():
    common = json.loads((paths.ROOT / "scripts/elastickv/schemas/common.schema.json").read_text())["$defs"]
    assert tuple(common["tokenPolicy"]["enum"]) == policies.TOKEN_POLICIES
    assert tuple(common["elementPolicy"]["enum"]) == policies.ELEMENT_POLICIES
    assert tuple(common["elastickvPolicy"]["enum"]) == policies.NAMES
    scored = {p for p in policies.TOKEN_POLICIES if policies.policy(p).score != "none"}
    assert set(common["scorePolicy"]["enum"]) == scored
    assert tuple(common["elastickv"]["properties"]["scope"]["enum"]) == envvars.SCOPES
