#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 2 (LaTeX): PPL per model, ElasticKV against llama.cpp's quantized caches, and its inline numbers.
Reads results/results_all.json -> paper/generated/tab02_ppl.tex, numbers-tab02_ppl.tex."""

import argparse
import sys

import pandas as pd
import textable as tt
from elastickv import frame


def main() -> None:
    agg = tt.load("results_all.json")
    nums = {}
    for e in frame.entries(agg).to_dict("records"):
        key = tt.macro_name(f"T{e['model']}{e['row']}")
        nums[key + "Ppl"] = tt.num(e["ppl"], 3)
        nums[key + "Dppl"] = tt.num(e["ppl_delta_pct"], 2, sign=True) + r"\%"
        nums[key + "Kld"] = tt.num(e["kld"], 4)
        nums[key + "Topone"] = tt.num(e["same_top_p_pct"], 1) + r"\%" if pd.notna(e["same_top_p_pct"]) else "--"
        nums[key + "Spars"] = f"{100 * (e['sparsity_k'] + e['sparsity_v']) / 2:.1f}\\%"
        nums[key + "Nominal"] = tt.num(e["nominal"]) + r"$\times$"
        nums[key + "Bitmap"] = (tt.num(e["bitmap"]) + r"$\times$") if e["bitmap"] and pd.notna(e["bitmap"]) else "--"
        nums[key + "Resident"] = tt.num(e["resident"]) + r"$\times$"
        nums[key + "Chunks"] = str(e["chunks"])
        nums[key + "Tokens"] = f"{e['tokens_scored']:,}".replace(",", "{,}")
    facts = tt.ppl_caption_facts(agg)
    nums |= {"TtwoEvict": facts["evict"], "TtwoDevice": facts["device"], "TtwoCommit": facts["commit"]}
    tt.write("tab02_ppl", tt.ppl_table(agg["data"]["entries"]), nums, "scripts/plot/tab02_ppl.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
