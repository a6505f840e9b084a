#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 6: decode and prefill overhead of the ElasticKV pass (hook on vs off, same interleaved run),
mean ± std over rounds. Reads results/throughput/throughput.json -> paper/figures/fig6_throughput.{pdf,png}."""

import argparse
import sys

import numpy as np

import plotcommon as pc


def main() -> None:
    agg = pc.load("throughput/throughput.json")
    rows = [r for r in agg["data"]["rows"] if r["hook"]]
    meas = list(dict.fromkeys((r["kind"], r["size"]) for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = pc.plt.subplots(figsize=(6.4, 2.4))
    width = 0.8 / len(variants)
    for j, v in enumerate(variants):
        m = [next((r for r in rows if (r["kind"], r["size"]) == k and r["variant"] == v), None) for k in meas]
        ax.bar(np.arange(len(meas)) + j * width, [r["overhead_pct"]["mean"] for r in m], width,
               yerr=[r["overhead_pct"]["std"] or 0 for r in m], capsize=2, label=v, color=f"C{j}")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xticks(np.arange(len(meas)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{k} {'depth' if k == 'decode' else 'prompt'} {s}" for k, s in meas])
    ax.set_ylabel("time per token vs hook off (%)")
    ax.legend(frameon=False, ncol=len(variants), fontsize=6)
    cfg = agg["config"]
    ax.set_title(f"{cfg['model']}, {agg['device']['gpu'] or agg['device']['cpu']}, -t {cfg['threads']}", fontsize=7)
    pc.save(fig, "fig6_throughput")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(pc.main_guard(main))
