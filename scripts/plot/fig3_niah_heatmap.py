#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 3: needle-in-a-haystack heat maps, hook off (baseline) and ElasticKV side by side.

One row of panels per model with a grid in results/niah/<model>.json (written by scripts/eval/f5_niah.py):
x = context length (tokens), y = needle depth, green = the 7-digit number was in the greedy answer,
red = it was not. Cells where the needle lay in the SINK positions (never thresholded) are marked "s" in the
ElasticKV panel. Reads results/ only; writes paper/figures/fig3_niah_heatmap.pdf and .png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plotcommon  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

LABELS = {"baseline": "baseline (hook off)", "elastickv": "ElasticKV (sweet)"}
CMAP = ListedColormap(["#d7301f", "#1a9850"])  # incorrect, correct


def grids() -> list[dict]:
    """The NIAH aggregates in results/niah/, the largest grid first."""
    files = sorted((plotcommon.RESULTS / "niah").glob("*.json"))
    if not files:
        raise plotcommon.MissingResult("results/niah/<model>.json is missing; the script that makes it is listed "
                                       "in results/MANIFEST.md (scripts/eval/f5_niah.py)")
    aggs = [plotcommon.load(f"niah/{f.name}") for f in files]
    return sorted(aggs, key=lambda a: (-len(a["data"]["cells"]), a["data"]["model"]))


def main() -> None:
    aggs = grids()
    n_rows = len(aggs)
    n_cols = max(len(a["data"]["rows"]) for a in aggs)
    fig, axes = plotcommon.plt.subplots(n_rows, n_cols, figsize=(3.2 * n_cols, 2.6 * n_rows), squeeze=False)
    for i, agg in enumerate(aggs):
        d = agg["data"]
        lengths, depths = d["lengths"], d["depths"]
        sink = {(c["length"], c["depth"]) for c in d["cells"] if c.get("needle_in_sink")}
        for j, row in enumerate(d["rows"]):
            ax = axes[i][j]
            z = np.array(d["grid"][row], dtype=float).T  # depth x length
            ax.imshow(z, cmap=CMAP, vmin=0, vmax=1, aspect="auto", origin="upper")
            ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
            ax.set_yticks(range(len(depths)), [f"{100 * x:g}%" for x in depths])
            ax.set_xticks(np.arange(-0.5, len(lengths)), minor=True)
            ax.set_yticks(np.arange(-0.5, len(depths)), minor=True)
            ax.grid(which="minor", color="white", linewidth=1)
            ax.tick_params(which="minor", length=0)
            if row != "baseline":
                for (L, dep) in sink:
                    ax.text(lengths.index(L), depths.index(dep), "s", ha="center", va="center", color="white",
                            fontsize=7)
            s = d["scores"][row]
            ax.set_title(f"{d['model']}: {LABELS.get(row, row)}\n{s['correct']}/{s['total']} correct")
            ax.set_xlabel("context length (tokens)")
            if j == 0:
                ax.set_ylabel("needle depth")
        for j in range(len(d["rows"]), n_cols):
            axes[i][j].axis("off")
    fig.tight_layout()
    fig.text(0.01, -0.02, "green: the needle's number is in the greedy answer; red: it is not. s: the needle starts "
             "inside the first SINK positions, which ElasticKV never thresholds.", fontsize=6, ha="left", va="top")
    plotcommon.save(fig, "fig3_niah_heatmap")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(plotcommon.main_guard(main))
