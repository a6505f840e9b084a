#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 6 (LaTeX): throughput and overhead of the pass. Reads results/throughput/throughput.json
-> paper/generated/tab06_throughput.tex."""

import argparse
import sys

import textable as tt


def main() -> None:
    agg = tt.load("throughput/throughput.json")
    rows, nums = [], {}
    for r in agg["data"]["rows"]:
        o = r["overhead_pct"]
        over = "--" if not r["hook"] else f"{o['mean']:+.1f} $\\pm$ {o['std'] or 0:.1f} ({o['min']:+.1f}..{o['max']:+.1f})"
        rows.append([f"{r['kind']} {r['size']}", tt.esc(r["variant"]), tt.esc(r["mode"] or "off"),
                     str(r["evict_every"] or "--"), tt.num(r["tokens_per_s"], 1), over])
        if r["hook"]:
            k = tt.macro_name(f"TSix{r['kind']}{r['size']}{r['variant']}")
            nums[k] = f"{o['mean']:+.1f}\\%"
            nums[k + "Std"] = f"{o['std'] or 0:.1f}"
    cfg = agg["config"]
    nums |= {"TSixDevice": tt.esc(agg["device"]["gpu"] or agg["device"]["cpu"]), "TSixThreads": str(cfg["threads"]),
             "TSixRounds": str(cfg["rounds"]), "TSixNgen": str(cfg["n_gen"]), "TSixModel": tt.esc(cfg["model"])}
    table = tt.tabular("lllrrr", ["measurement", "variant", "mode", "EVICT\\_EVERY", "tokens/s",
                                  "time/token vs off (\\%)"], rows)
    tt.write("tab06_throughput", table, nums, "scripts/plot/tab06_throughput.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
