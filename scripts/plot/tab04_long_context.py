#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 4 (LaTeX): long-context PPL (c = 4096, 8192). Reads results/long_context_results.json
-> paper/generated/tab04_long_context.tex."""

import argparse
import sys

import textable as tt


def main() -> None:
    agg = tt.load("long_context_results.json")
    E = agg["data"]["entries"]
    nums = {}
    for e in E:
        key = tt.macro_name(f"TFour{e['model']}{e['ctx']}{e['row']}")
        nums[key + "Kld"] = tt.num(e["kld"]["value"], 4) if e["kld"] else "--"
        nums[key + "Dppl"] = tt.num(e["ppl_delta_pct"], 2, sign=True) + r"\%"
        nums[key + "Chunks"] = str(e["chunks"])
    parts = []
    for model, ctx in dict.fromkeys((e["model"], e["ctx"]) for e in E):
        row = {e["row"]: e for e in E if (e["model"], e["ctx"]) == (model, ctx)}
        if not all(k in row for k in ("sweet", "q8_0", "q4_0")):
            continue
        sw, q8, q4 = row["sweet"]["kld"]["value"], row["q8_0"]["kld"]["value"], row["q4_0"]["kld"]["value"]
        order = sorted([("sweet", sw), ("q8\\_0", q8), ("q4\\_0", q4)], key=lambda x: x[1])
        parts.append(f"{tt.esc(model)} at $c={ctx}$ ({row['sweet']['chunks']} chunk"
                     f"{'s' if row['sweet']['chunks'] > 1 else ''}): KLD sweet {sw:.4f}, q8\\_0 {q8:.4f}, q4\\_0 {q4:.4f} "
                     f"(lowest: {order[0][0]})")
    nums["TFourSentence"] = ("At long context the ranking by KL divergence is: " + "; ".join(parts) +
                             ". These are single long chunks on a CPU: read them as indications, not estimates.")
    tt.write("tab04_long_context", tt.ppl_table(E, with_ctx=True), nums, "scripts/plot/tab04_long_context.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
