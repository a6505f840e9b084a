#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 9 (LaTeX): PPL against accuracy measures, and KV heads against PPL.
Reads results/ppl_vs_accuracy.json and results/kv_heads_vs_ppl.json -> paper/generated/tab09_ppl_vs_accuracy.tex."""

import argparse
import sys

import textable as tt
from elastickv import frame


def main() -> None:
    agg = tt.load("ppl_vs_accuracy.json")
    kv = tt.load("kv_heads_vs_ppl.json")
    c = agg["data"]["correlations"]
    acc, heads = frame.entries(agg, key="rows"), frame.entries(kv, key="rows")
    rows = [[tt.esc(r["table"]), tt.esc(r["model"]), str(r["ctx"]), tt.esc(r["row"]),
             tt.num(r["delta_ppl_pct"], 2, sign=True) + r"\%", tt.num(r["kld"], 4), tt.num(r["same_top_p_pct"], 2)]
            for r in acc[acc["table"].isin(["Table 2", "Table 4"])].to_dict("records")]
    table = tt.tabular("llllrrr", ["table", "model", "$c$", "row", r"$\Delta$PPL", "KLD", "top-1 (\\%)"], rows)
    kv_rows = [[tt.esc(r["model"]), str(r["kv_heads"]), tt.esc(r["row"]), tt.num(r["delta_ppl_pct"], 2, sign=True) + r"\%",
                tt.num(r["kld"], 4), tt.num(r["same_top_p_pct"], 2),
                f"{100 * r['sparsity_k']:.1f}/{100 * r['sparsity_v']:.1f}"] for r in heads.to_dict("records")]
    table += "\n\\medskip\n\n" + tt.tabular("lrlrrrr", ["model", "KV heads", "row", r"$\Delta$PPL", "KLD", "top-1 (\\%)",
                                                       "K/V sparsity (\\%)"], kv_rows)
    nums = {"TNineRows": str(c["n_rows"]), "TNineRhoPplKld": tt.num(c["spearman_dppl_kld"], 2),
            "TNineRhoPplTop": tt.num(c["spearman_dppl_top1_disagreement"], 2),
            "TNineRhoKldTop": tt.num(c["spearman_kld_top1_disagreement"], 2)}
    tt.write("tab09_ppl_vs_accuracy", table, nums, "scripts/plot/tab09_ppl_vs_accuracy.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
