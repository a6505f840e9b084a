# SPDX-License-Identifier: Apache-2.0
"""Shared by the needle-in-a-haystack figures (Figure 3, Figure 11): loading the grids that
scripts/eval/f5_niah.py writes (<runs_dir>/<model>.json) and drawing them as heat maps, one row of panels
per model and one panel per row of the grid (x = context length, y = needle depth, green = correct)."""

from __future__ import annotations

import textwrap

import numpy as np
from matplotlib.colors import ListedColormap

import plotcommon

CMAP = ListedColormap(["#d7301f", "#1a9850"])  # incorrect, correct


def grids(subdir: str, script: str = "scripts/eval/f5_niah.py") -> list[dict]:
    """The NIAH aggregates in results/<subdir>/, the largest grid first."""
    files = sorted((plotcommon.RESULTS / subdir).glob("*.json"))
    if not files:
        raise plotcommon.MissingResult(f"results/{subdir}/<model>.json is missing; the script that makes it is "
                                       f"listed in results/MANIFEST.md ({script})")
    aggs = [plotcommon.load(f"{subdir}/{f.name}") for f in files]
    return sorted(aggs, key=lambda a: (-len(a["data"]["cells"]), a["data"]["model"]))


def heatmaps(aggs: list[dict], labels: dict[str, str], name: str, note: str, panel_width: float = 3.2) -> None:
    """One panel per (model, row); "s" marks the cells of hook rows whose needle starts in the SINK positions
    (never thresholded or evicted). Writes paper/figures/<name>.pdf and .png."""
    n_rows = len(aggs)
    n_cols = max(len(a["data"]["rows"]) for a in aggs)
    fig, axes = plotcommon.plt.subplots(n_rows, n_cols, figsize=(panel_width * n_cols, 2.6 * n_rows), squeeze=False)
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
            ax.set_title(f"{d['model']}: {labels.get(row, row)}\n{s['correct']}/{s['total']} correct")
            ax.set_xlabel("context length (tokens)")
            if j == 0:
                ax.set_ylabel("needle depth")
        for j in range(len(d["rows"]), n_cols):
            axes[i][j].axis("off")
    fig.tight_layout()
    fig.text(0.01, -0.02, "\n".join(textwrap.wrap(note, 200)), fontsize=6, ha="left", va="top")
    plotcommon.save(fig, name)
