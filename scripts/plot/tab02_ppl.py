#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 2 (LaTeX): PPL per model, ElasticKV against llama.cpp's quantized caches, and its inline numbers.
Reads results/results_all.json -> paper/generated/tab02_ppl.tex, numbers-tab02_ppl.tex."""

import argparse
import sys

import textable as tt


def main() -> None:
    agg = tt.load("results_all.json")
    E = agg["data"]["entries"]
    nums = {}
    for e in E:
        key = tt.macro_name(f"T{e['model']}{e['row']}")
        nums[key + "Ppl"] = tt.num(e["ppl"]["value"], 3)
        nums[key + "Dppl"] = tt.num(e["ppl_delta_pct"], 2, sign=True) + r"\%"
        nums[key + "Kld"] = tt.num(e["kld"]["value"], 4) if e["kld"] else "--"
        nums[key + "Topone"] = tt.num(e["same_top_p_pct"]["value"], 1) + r"\%" if e["same_top_p_pct"] else "--"
        nums[key + "Spars"] = f"{100 * (e['sparsity_k'] + e['sparsity_v']) / 2:.1f}\\%"
        nums[key + "Nominal"] = tt.num(e["nominal"]) + r"$\times$"
        nums[key + "Bitmap"] = (tt.num(e["bitmap"]) + r"$\times$") if e["bitmap"] else "--"
        nums[key + "Resident"] = tt.num(e["resident"]) + r"$\times$"
        nums[key + "Chunks"] = str(e["chunks"])
        nums[key + "Tokens"] = f"{e['tokens_scored']:,}".replace(",", "{,}")
    nums |= {"TtwoEvict": tt.ppl_caption_facts(agg)["evict"], "TtwoDevice": tt.ppl_caption_facts(agg)["device"],
             "TtwoCommit": tt.ppl_caption_facts(agg)["commit"]}
    tt.write("tab02_ppl", tt.ppl_table(E), nums, "scripts/plot/tab02_ppl.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
