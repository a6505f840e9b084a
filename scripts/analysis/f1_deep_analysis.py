#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 12: paired-chunk analysis of the perplexity tables.

Every row of a perplexity table was scored on the same chunks as its f16 baseline run, so the per-chunk
difference d_i = ln PPL_row(chunk i) - ln PPL_baseline(chunk i) is paired: chunk difficulty cancels. For every
(table, model, ctx, row) this script reports the mean of d_i, its standard error over chunks, z = mean/se,
the ΔPPL % with a 95 % interval (normal approximation, exp(mean ± 1.96 se) - 1, and a seeded percentile
bootstrap), the fraction of chunks made worse, and, for comparison, the unpaired PPL error bars of
llama-perplexity. Per-chunk values come from the running means llama-perplexity prints (see
scripts/eval/ppl_tables.py), so rows with fewer than 3 chunks get no interval.

Reads only results/ (the tables of scripts/eval/ppl_tables.py) -> results/ppl/paired_chunks.json.
"""

from __future__ import annotations

import argparse
import math
import sys

from elastickv import config, paths, pplstats, results  # noqa: E402

DEFAULTS = {
    "artifact": "Table 12",
    "inputs": [],               # aggregate tables under results/ with per-chunk values
    "min_chunks": 3,            # rows with fewer chunks get no interval
    "n_boot": 10000,            # bootstrap resamples
    "seed": 0,                  # bootstrap seed
    "output": "results/ppl/paired_chunks.json",
}


def analyse(entries: list[dict], cfg: dict, table: str) -> list[dict]:
    out = []
    base = {(e["model"], e["ctx"]): e for e in entries if e["row"] == "baseline"}
    for e in entries:
        b = base.get((e["model"], e["ctx"]))
        if e["row"] == "baseline" or not e["per_chunk"] or b is None:
            continue
        # each run's own per-chunk NLL minus the f16 baseline run's (not llama.cpp's ln(PPL(Q)/PPL(base)), whose
        # base side comes from the lossy 16-bit stored log-probabilities)
        d = [c["nll"] - cb["nll"] for c, cb in zip(e["per_chunk"], b["per_chunk"])]
        n = len(d)
        mean, se = pplstats.mean_se(d)
        row = {"table": table, "model": e["model"], "ctx": e["ctx"], "row": e["row"], "cache": e["cache"],
               "chunks": n, "delta_ppl_pct": e["ppl_delta_pct"], "mean_delta_nll": mean,
               "se_delta_nll": se if n >= cfg["min_chunks"] else None,
               "z": mean / se if n >= cfg["min_chunks"] and se > 0 else None,
               "frac_chunks_worse": sum(x > 0 for x in d) / n,
               "ci95_normal_pct": None, "ci95_bootstrap_pct": None,
               "unpaired_ppl_stderr_pct": 100 * e["ppl"]["stderr"] / e["ppl"]["value"],
               "kld": e["kld"]["value"] if e["kld"] else None}
        if n >= cfg["min_chunks"]:
            row["ci95_normal_pct"] = [100 * (math.exp(mean - 1.96 * se) - 1), 100 * (math.exp(mean + 1.96 * se) - 1)]
            lo, hi = pplstats.bootstrap_ci(d, cfg["n_boot"], cfg["seed"])
            row["ci95_bootstrap_pct"] = [100 * (math.exp(lo) - 1), 100 * (math.exp(hi) - 1)]
        out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_arguments(ap, "table12_paired_chunks")
    args = ap.parse_args()
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides)
        rows, sources = [], []
        for rel in cfg["inputs"]:
            agg = results.load_input(rel)
            rows += analyse(agg["data"]["entries"], cfg, agg["artifact"])
            sources.append(rel)
        notes = ("d_i = per-chunk ln PPL(row) - ln PPL(f16 baseline run), same chunks, from each run's own per-chunk PPL; se = sd(d)/sqrt(n); z = mean/se; "
                 "ci95_normal_pct = 100(exp(mean ± 1.96 se) - 1); ci95_bootstrap_pct: seeded percentile bootstrap of the "
                 "mean; unpaired_ppl_stderr_pct = llama-perplexity's PPL error / PPL (what an unpaired comparison sees).")
        agg = results.aggregate(cfg["artifact"], "scripts/analysis/f1_deep_analysis.py", cfg, {"rows": rows}, sources, notes)
        results.write_aggregate(paths.ROOT / cfg["output"], agg, force=args.force)
    except (config.ConfigError, results.ResultExists, FileNotFoundError) as e:
        print(f"f1_deep_analysis: {e}", file=sys.stderr)
        return 1
    print("| table | model | ctx | row | n | ΔPPL % | paired 95% CI | z | chunks worse | unpaired ± % |\n" + "|---" * 10 + "|")
    for r in rows:
        ci = f"[{r['ci95_normal_pct'][0]:+.2f}, {r['ci95_normal_pct'][1]:+.2f}]" if r["ci95_normal_pct"] else "—"
        z = f"{r['z']:+.1f}" if r["z"] is not None else "—"
        print(f"| {r['table']} | {r['model']} | {r['ctx']} | {r['row']} | {r['chunks']} | {r['delta_ppl_pct']:+.2f} | {ci} "
              f"| {z} | {100 * r['frac_chunks_worse']:.0f}% | {r['unpaired_ppl_stderr_pct']:.1f} |")
    print(f"\nf1_deep_analysis: {cfg['output']} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
