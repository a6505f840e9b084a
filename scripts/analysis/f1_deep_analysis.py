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

import math
import sys

import pandas as pd

from elastickv import config, frame, paths, pplstats, results, startup
from elastickv import kvanalysis as ka

DEFAULTS = {
    "artifact": "Table 12",
    "inputs": [],               # aggregate tables under results/ with per-chunk values
    "min_chunks": 3,            # rows with fewer chunks get no interval
    "n_boot": 10000,            # bootstrap resamples
    "seed": 0,                  # bootstrap seed
    "output": "results/ppl/paired_chunks.json",
}


def analyse(agg: dict, cfg: dict) -> list[dict]:
    e = frame.entries(agg)
    if e.empty:
        return []
    # one row per (entry, chunk): each run's own per-chunk NLL, chunks numbered from 0 within the entry
    pc = e["per_chunk"].explode().dropna()
    nll = pd.DataFrame({"entry": pc.index, "chunk": pc.groupby(level=0).cumcount().to_numpy(),
                        "nll": [c["nll"] for c in pc]}).join(e[["model", "ctx", "row"]], on="entry")
    # paired with the f16 baseline run's NLL of the same (model, ctx, chunk) (not llama.cpp's ln(PPL(Q)/PPL(base)),
    # whose base side comes from the lossy 16-bit stored log-probabilities)
    base = nll[nll["row"] == "baseline"].drop(columns=["entry", "row"])
    paired = nll[nll["row"] != "baseline"].merge(base, on=["model", "ctx", "chunk"], suffixes=("", "_base"))
    out = []
    for i, d in (paired["nll"] - paired["nll_base"]).groupby(paired["entry"]):
        r, n = e.loc[i], len(d)
        mean, se = pplstats.mean_se(d)
        interval = n >= cfg["min_chunks"]
        row = {"table": agg["artifact"], "model": r["model"], "ctx": r["ctx"], "row": r["row"], "cache": r["cache"],
               "chunks": n, "delta_ppl_pct": r["ppl_delta_pct"], "mean_delta_nll": mean,
               "se_delta_nll": se if interval else None, "z": mean / se if interval and se > 0 else None,
               "frac_chunks_worse": (d > 0).mean(), "ci95_normal_pct": None, "ci95_bootstrap_pct": None,
               "unpaired_ppl_stderr_pct": 100 * r["ppl_stderr"] / r["ppl"], "kld": r["kld"]}
        if interval:
            row["ci95_normal_pct"] = [100 * (math.exp(mean - 1.96 * se) - 1), 100 * (math.exp(mean + 1.96 * se) - 1)]
            lo, hi = pplstats.bootstrap_ci(d, cfg["n_boot"], cfg["seed"])
            row["ci95_bootstrap_pct"] = [100 * (math.exp(lo) - 1), 100 * (math.exp(hi) - 1)]
        out.append(row)
    return ka.jsonable(out)     # Python types, a missing KLD as None


def main(argv: list[str] | None = None) -> int:
    ap = startup.driver_parser(__doc__, "table12_paired_chunks")
    args = startup.parse_args(ap, argv)
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides)
        rows, sources = [], []
        for rel in cfg["inputs"]:
            rows += analyse(results.load_input(rel), cfg)
            sources.append(rel)
        notes = ("d_i = per-chunk ln PPL(row) - ln PPL(f16 baseline run), same chunks, from each run's own per-chunk PPL; se = sd(d)/sqrt(n); z = mean/se; "
                 "ci95_normal_pct = 100(exp(mean ± 1.96 se) - 1); ci95_bootstrap_pct: seeded percentile bootstrap of the "
                 "mean; unpaired_ppl_stderr_pct = llama-perplexity's PPL error / PPL (what an unpaired comparison sees).")
        agg = results.aggregate(cfg["artifact"], "scripts/analysis/f1_deep_analysis.py", cfg, {"rows": rows}, sources, notes)
        results.write_aggregate(paths.ROOT / cfg["output"], agg, force=args.force)
    except startup.driver_errors() as e:
        return startup.fail(__file__, e)
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
