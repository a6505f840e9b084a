#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 9: perplexity against accuracy measures, and KV heads against perplexity damage.

PPL vs accuracy: for every non-baseline row of the perplexity tables (ElasticKV settings, sink ablation,
llama.cpp's quantized caches), the PPL change against its f16 baseline beside two accuracy measures of the
same tokens: KL divergence of the next-token distribution and top-1 agreement with the baseline ("Same top
p"), and their rank correlations (Spearman) over all rows. With the needle-in-a-haystack results present
(results/niah/), the exact-match accuracy of the baseline and ElasticKV is added per model.

KV heads vs PPL: per model, its number of KV heads (configs/models.yaml) beside the ΔPPL, KLD and sparsity
of the sweet and aggressive presets at c = 512 (Table 2).

Reads only results/ -> results/ppl_vs_accuracy.json and results/kv_heads_vs_ppl.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from elastickv import config, frame, models, paths, pplstats, results, startup
from elastickv import kvanalysis as ka

DEFAULTS = {
    "artifact": "Table 9",
    "inputs": [],                 # perplexity tables (scripts/eval/ppl_tables.py)
    "table2": "results/results_all.json",   # the per-model table for the KV-heads analysis
    "kv_rows": ["sweet", "aggressive"],
    "niah_dir": "results/niah",   # needle-in-a-haystack results, if present
    "output": "results/ppl_vs_accuracy.json",
    "output_kv_heads": "results/kv_heads_vs_ppl.json",
}


def niah_summary(folder: Path) -> tuple[list[dict], list[str]]:
    out, sources = [], []
    for p in sorted(folder.glob("*.json")):
        agg = json.loads(p.read_text())
        if agg.get("kind") != "aggregate":
            continue
        summary = agg["data"].get("summary") if isinstance(agg["data"], dict) else None
        if summary:
            out.append({"model": p.stem, **summary})
            sources.append(paths.relative(p))
    return out, sources


def accuracy_rows(agg: dict) -> list[dict]:
    """The non-baseline rows of one perplexity table that have accuracy measures (KLD, top-1 agreement)."""
    e = frame.entries(agg)
    if e.empty:
        return []
    e = e[(e["row"] != "baseline") & e["kld"].notna()]
    rows = pd.DataFrame({"table": agg["artifact"], "model": e["model"], "ctx": e["ctx"], "row": e["row"],
                         "cache": e["cache"], "delta_ppl_pct": e["ppl_delta_pct"], "kld": e["kld"],
                         "same_top_p_pct": e["same_top_p_pct"], "sparsity": (e["sparsity_k"] + e["sparsity_v"]) / 2})
    return ka.jsonable(rows.to_dict("records"))


def kv_heads_rows(t2: dict, kv_rows: list[str]) -> list[dict]:
    """The rows ``kv_rows`` of Table 2 beside each model's number of KV heads, by row, then KV heads."""
    e = frame.entries(t2)
    e = e[e["row"].isin(kv_rows)]
    kv = pd.DataFrame({"model": e["model"], "kv_heads": [models.entry(m)[1].get("kv_heads") for m in e["model"]],
                       "row": e["row"], "ctx": e["ctx"], "delta_ppl_pct": e["ppl_delta_pct"], "kld": e["kld"],
                       "same_top_p_pct": e["same_top_p_pct"], "sparsity_k": e["sparsity_k"],
                       "sparsity_v": e["sparsity_v"]}, dtype=object)   # object: an unknown kv_heads stays None
    return ka.jsonable(kv.sort_values(["row", "kv_heads"], na_position="first").to_dict("records"))


def main(argv: list[str] | None = None) -> int:
    ap = startup.driver_parser(__doc__, "table9_ppl_vs_accuracy")
    args = startup.parse_args(ap, argv)
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides)
        rows, sources = [], []
        for rel in cfg["inputs"]:
            rows += accuracy_rows(results.load_input(rel))
            sources.append(rel)
        acc = pd.DataFrame(rows, columns=["delta_ppl_pct", "kld", "same_top_p_pct"])
        disagreement = 100 - acc["same_top_p_pct"]
        corr = {   # pplstats.spearman, not DataFrame.corr(method="spearman"), which differs in the last bits
            "n_rows": len(rows),
            "spearman_dppl_kld": pplstats.spearman(acc["delta_ppl_pct"], acc["kld"]),
            "spearman_dppl_top1_disagreement": pplstats.spearman(acc["delta_ppl_pct"], disagreement),
            "spearman_kld_top1_disagreement": pplstats.spearman(acc["kld"], disagreement),
        }
        niah, niah_sources = niah_summary(paths.ROOT / cfg["niah_dir"])
        notes = ("delta_ppl_pct: PPL change against the f16 baseline of the same chunks; kld, same_top_p_pct: against "
                 "the baseline's logits (llama-perplexity --kl-divergence). Spearman rank correlations over all rows.")
        agg = results.aggregate(cfg["artifact"], "scripts/analysis/f1_ppl_analysis.py", cfg,
                                {"rows": rows, "correlations": corr, "niah": niah}, sources + niah_sources, notes)
        results.write_aggregate(paths.ROOT / cfg["output"], agg, force=args.force)

        kv = kv_heads_rows(results.load_input(cfg["table2"]), cfg["kv_rows"])
        agg2 = results.aggregate("KV heads vs PPL", "scripts/analysis/f1_ppl_analysis.py", cfg, {"rows": kv},
                                 [cfg["table2"]], "kv_heads from configs/models.yaml; numbers from Table 2. With two "
                                 "models this is a comparison of two points, not a trend.")
        results.write_aggregate(paths.ROOT / cfg["output_kv_heads"], agg2, force=args.force)
    except startup.driver_errors() as e:
        return startup.fail(__file__, e)
    print(f"rows {corr['n_rows']}, Spearman(ΔPPL, KLD) = {corr['spearman_dppl_kld']:.2f}, "
          f"Spearman(ΔPPL, top-1 disagreement) = {corr['spearman_dppl_top1_disagreement']:.2f}, "
          f"Spearman(KLD, top-1 disagreement) = {corr['spearman_kld_top1_disagreement']:.2f}")
    for r in kv:
        print(f"{r['model']:22s} kv_heads {r['kv_heads']}  {r['row']:10s} ΔPPL {r['delta_ppl_pct']:+.2f}%  KLD {r['kld']:.5f}")
    print(f"f1_ppl_analysis: {cfg['output']} and {cfg['output_kv_heads']} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
