#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 14: the kv-cache-compression notebook's systems in llama.cpp (Table 21). One panel per document type
(narrative = WikiText-2 test, code = CPython modules, qa = routing-suite items; 2,048-token context): KL
divergence to the f16 cache against the budget in cells (log-log), one line per row of the notebook's systems
(H2O at its 80/20 split, semantic clustering at K = 32), thin grey lines for the other rows. Last panel: the
hook's own eviction time over the forward time of the same run at the smallest budget (narrative, log axis).
Reads results/notebook_protocol.json -> paper/figures/fig14_notebook_protocol.{pdf,png}."""

from __future__ import annotations

import argparse
import sys

import plotcommon as pc

MAIN = {"sliding_window": "C0", "streaming": "C1", "lru": "C2", "lru_fifo": "C3", "h2o-80-20": "C4",
        "semantic-k32": "C5", "learned": "C6"}
CTX = 2048


def main() -> None:
    agg = pc.load("notebook_protocol.json")
    es = [e for e in agg["data"]["entries"] if e["ctx"] == CTX]
    docs = list(dict.fromkeys(e["document"] for e in es))
    if not docs:
        raise pc.MissingResult("results/notebook_protocol.json holds no c2048 run yet")
    fig, axes = pc.plt.subplots(1, len(docs) + 1, figsize=(3.1 * (len(docs) + 1), 3.0), squeeze=False)
    for ax, doc in zip(axes[0], docs):
        d = [e for e in es if e["document"] == doc]
        for row in dict.fromkeys(e["row"] for e in d):
            pts = sorted((e["budget"], max(e["kld"]["value"], 1e-6)) for e in d if e["row"] == row)
            xs, ys = zip(*pts)
            if row in MAIN:
                ax.plot(xs, ys, marker="o", ms=3, lw=1.2, color=MAIN[row], label=row, zorder=3)
            else:
                ax.plot(xs, ys, lw=0.6, color="0.7", zorder=2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({e["budget"] for e in d}))
        ax.set_xticklabels([str(b) for b in sorted({e["budget"] for e in d})])
        ax.set_xlabel("budget (cells)")
        ax.set_title(f"{doc}, c{CTX}", fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("KLD to the f16 cache")
    axes[0][0].legend(fontsize=6, loc="lower left")
    ax = axes[0][-1]
    nar = [e for e in es if e["document"] == "narrative" and e["evict_overhead_pct"] is not None]
    if nar:
        low = min(e["budget"] for e in nar)
        bars = sorted((e for e in nar if e["budget"] == low), key=lambda e: e["evict_overhead_pct"])
        ax.barh([e["row"] for e in bars], [e["evict_overhead_pct"] for e in bars],
                color=[MAIN.get(e["row"], "0.6") for e in bars])
        ax.set_xscale("log")
        ax.set_xlabel(f"eviction time / forward time (%), B = {low}")
        ax.tick_params(axis="y", labelsize=6)
        ax.set_title("cost of a pass (narrative)", fontsize=8)
    fig.tight_layout()
    pc.save(fig, "fig14_notebook_protocol")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(pc.main_guard(main))
