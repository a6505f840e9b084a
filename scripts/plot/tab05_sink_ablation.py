#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 5 (LaTeX): sink ablation. Reads results/sink_ablation.json -> paper/generated/tab05_sink_ablation.tex."""

import argparse
import sys

import textable as tt
from elastickv import frame


def main() -> None:
    agg = tt.load("sink_ablation.json")
    df = frame.entries(agg)
    nums = {"TFiveChunks": str(df["chunks"].iloc[0]), "TFiveModel": tt.esc(df["model"].iloc[0])}
    for e in df[df["elastickv"].notna()].to_dict("records"):  # the hook's rows: one per sink setting
        k = tt.macro_name(f"TFiveSink{e['elastickv']['sink']}")
        nums[k + "Kld"] = tt.num(e["kld"], 4)
        nums[k + "Dppl"] = tt.num(e["ppl_delta_pct"], 2, sign=True) + r"\%"
        nums[k + "Topone"] = tt.num(e["same_top_p_pct"], 1) + r"\%"
    table = tt.ppl_table(agg["data"]["entries"], with_model=False)
    tt.write("tab05_sink_ablation", table, nums, "scripts/plot/tab05_sink_ablation.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
