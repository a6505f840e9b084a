#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 4: long-context quality: KL divergence of every row at c = 4096 and 8192, per model.
Reads results/long_context_results.json -> paper/figures/fig4_long_context.{pdf,png}."""

import argparse
import sys

import numpy as np

import plotcommon as pc


def main() -> None:
    agg = pc.load("long_context_results.json")
    entries = [e for e in agg["data"]["entries"] if e["row"] != "baseline"]
    groups = sorted({(e["model"], e["ctx"]) for e in entries}, key=lambda g: (g[0], g[1]))
    row_names = list(dict.fromkeys(e["row"] for e in entries))
    fig, ax = pc.plt.subplots(figsize=(6.4, 2.4))
    width = 0.8 / len(row_names)
    for j, name in enumerate(row_names):
        vals = []
        for g in groups:
            e = next((e for e in entries if (e["model"], e["ctx"]) == g and e["row"] == name), None)
            vals.append(e["kld"]["value"] if e else np.nan)
        ax.bar(np.arange(len(groups)) + j * width, vals, width, label=name, color=f"C{j}")
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{m}\nc={c}" for m, c in groups], fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("KL divergence vs f16")
    ax.legend(frameon=False, ncol=len(row_names), fontsize=6)
    pc.save(fig, "fig4_long_context")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(pc.main_guard(main))
