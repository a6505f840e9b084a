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
    tt.write("tab04_long_context", tt.ppl_table(E, with_ctx=True), nums, "scripts/plot/tab04_long_context.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
