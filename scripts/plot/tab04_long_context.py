#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 4 (LaTeX): long-context PPL (c = 4096, 8192). Reads results/long_context_results.json
-> paper/generated/tab04_long_context.tex."""

import argparse
import sys

import textable as tt
from elastickv import frame


def main() -> None:
    agg = tt.load("long_context_results.json")
    df = frame.entries(agg)
    nums = {}
    for e in df.to_dict("records"):
        key = tt.macro_name(f"TFour{e['model']}{e['ctx']}{e['row']}")
        nums[key + "Kld"] = tt.num(e["kld"], 4)
        nums[key + "Dppl"] = tt.num(e["ppl_delta_pct"], 2, sign=True) + r"\%"
        nums[key + "Chunks"] = str(e["chunks"])
    parts = []
    for (model, ctx), g in df.groupby(["model", "ctx"], sort=False):
        g = g.set_index("row")
        if not {"sweet", "q8_0", "q4_0"} <= set(g.index):
            continue
        sw, q8, q4 = g.loc[["sweet", "q8_0", "q4_0"], "kld"]
        chunks = g.at["sweet", "chunks"]
        order = sorted([("sweet", sw), ("q8\\_0", q8), ("q4\\_0", q4)], key=lambda x: x[1])
        parts.append(f"{tt.esc(model)} at $c={ctx}$ ({chunks} chunk{'s' if chunks > 1 else ''}): "
                     f"KLD sweet {sw:.4f}, q8\\_0 {q8:.4f}, q4\\_0 {q4:.4f} (lowest: {order[0][0]})")
    nums["TFourSentence"] = ("At long context the ranking by KL divergence is: " + "; ".join(parts) +
                             ". These are single long chunks on a CPU: read them as indications, not estimates.")
    table = tt.ppl_table(agg["data"]["entries"], with_ctx=True)
    tt.write("tab04_long_context", table, nums, "scripts/plot/tab04_long_context.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
