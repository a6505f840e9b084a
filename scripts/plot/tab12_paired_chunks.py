#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 12 (LaTeX): paired-chunk analysis. Reads results/ppl/paired_chunks.json
-> paper/generated/tab12_paired_chunks.tex."""

import argparse
import sys

import textable as tt
from elastickv import frame


def main() -> None:
    agg = tt.load("ppl/paired_chunks.json")
    rows, nums = [], {}
    df = frame.entries(agg, key="rows")
    for r in df[df["table"].isin(["Table 2", "Table 5"])].to_dict("records"):
        ci = r["ci95_normal_pct"]
        rows.append([tt.esc(r["table"]), tt.esc(r["model"]), tt.esc(r["row"]), str(r["chunks"]),
                     tt.num(r["delta_ppl_pct"], 2, sign=True) + r"\%",
                     f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "--", tt.num(r["z"], 1, sign=True),
                     f"{100 * r['frac_chunks_worse']:.0f}", f"$\\pm${r['unpaired_ppl_stderr_pct']:.1f}"])
        if ci:
            k = tt.macro_name(f"TTwelve{r['table']}{r['model']}{r['row']}")
            nums[k + "Lo"], nums[k + "Hi"] = f"{ci[0]:+.2f}\\%", f"{ci[1]:+.2f}\\%"
            nums[k + "Z"] = tt.num(r["z"], 1, sign=True)
    table = tt.tabular("lllrrrrrr", ["table", "model", "row", "chunks", r"$\Delta$PPL", "paired 95\\% CI", "$z$",
                                     "chunks worse (\\%)", "unpaired err (\\%)"], rows)
    tt.write("tab12_paired_chunks", table, nums, "scripts/plot/tab12_paired_chunks.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
