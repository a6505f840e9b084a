#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 1 (LaTeX): threshold ablation (scale sweep, defaults, presets).
Reads results/f4_thresh_ablation_results.json -> paper/generated/tab01_threshold_ablation.tex."""

import argparse
import sys

import textable as tt


def main() -> None:
    agg = tt.load("f4_thresh_ablation_results.json")
    E = agg["data"]["entries"]
    rows = []
    for e in E:
        scales = f"{e['elastickv']['scale_k']:.2f}/{e['elastickv']['scale_v']:.2f}" if e["elastickv"] else "off"
        rows.append([tt.esc(e["row"]), scales, tt.pm(e["ppl"], 3), tt.num(e["ppl_delta_pct"], 2, sign=True) + r"\%",
                     tt.pm(e["kld"], 4), tt.num(e["same_top_p_pct"]["value"], 2),
                     f"{100 * e['sparsity_k']:.1f}/{100 * e['sparsity_v']:.1f}",
                     f"{100 * (e['sparsity_k_region'] or 0):.1f}/{100 * (e['sparsity_v_region'] or 0):.1f}",
                     tt.num(e["nominal"]) + r"$\times$"])
    table = tt.tabular("llrrrrrrr", ["row", "scale K/V", "PPL", r"$\Delta$PPL", "KLD", "top-1 (\\%)",
                                     "sparsity all (\\%)", "region (\\%)", "nominal"], rows)
    e0 = E[0]
    nums = {"TOneModel": tt.esc(e0["model"]), "TOneChunks": str(e0["chunks"]), "TOneCtx": str(e0["ctx"])}
    for e in E:
        if e["elastickv"]:
            nums[tt.macro_name(f"TOne{e['row']}Kld")] = tt.num(e["kld"]["value"], 4)
    tt.write("tab01_threshold_ablation", table, nums, "scripts/plot/tab01_threshold_ablation.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
