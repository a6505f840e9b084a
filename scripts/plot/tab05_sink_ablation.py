#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 5 (LaTeX): sink ablation. Reads results/sink_ablation.json -> paper/generated/tab05_sink_ablation.tex."""

import argparse
import sys

import textable as tt


def main() -> None:
    agg = tt.load("sink_ablation.json")
    E = agg["data"]["entries"]
    nums = {"TFiveChunks": str(E[0]["chunks"]), "TFiveModel": tt.esc(E[0]["model"])}
    for e in E:
        if e["elastickv"]:
            k = tt.macro_name(f"TFiveSink{e['elastickv']['sink']}")
            nums[k + "Kld"] = tt.num(e["kld"]["value"], 4)
            nums[k + "Dppl"] = tt.num(e["ppl_delta_pct"], 2, sign=True) + r"\%"
            nums[k + "Topone"] = tt.num(e["same_top_p_pct"]["value"], 1) + r"\%"
    tt.write("tab05_sink_ablation", tt.ppl_table(E, with_model=False), nums, "scripts/plot/tab05_sink_ablation.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
