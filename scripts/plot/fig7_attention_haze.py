#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 7: proxy-attention entropy, selectivity and output error against K sparsity, ElasticKV vs random
zeroing at matched sparsity, on the models' real K/V (a simulation; see the result's notes).

Reads results/attention_entropy_results.json (scripts/analysis/simulate_attention_haze.py), writes
paper/figures/fig7_attention_haze.{pdf,png}. Error bars: standard error over layers x KV heads.
"""

from __future__ import annotations

import argparse
import sys

import plotcommon as pc

RESULT = "attention_entropy_results.json"
PANELS = (("entropy_delta", "Δ attention entropy vs dense (nats)"),
          ("topk_mass", "attention mass on top-{k} keys"),
          ("out_rel_err", "attention output rel. error"))
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    res = pc.load(RESULT)
    topk = res["config"]["topk"]
    preset_names = set(res["config"].get("presets") or {})
    fig, axes = pc.plt.subplots(1, 3, figsize=(7.2, 2.4))
    for ci, (model, d) in enumerate(res["data"]["models"].items()):
        color = COLORS[ci % len(COLORS)]
        sweep = sorted((p for p in d["points"] if p["label"] not in preset_names), key=lambda p: p["scale_k"])
        presets = [p for p in d["points"] if p["label"] in preset_names]
        for ax, (metric, _) in zip(axes, PANELS):
            for meth, style, marker in (("elastickv", "-", "o"), ("random", "--", "x")):
                xs = [100 * p[meth]["sparsity_k_region"]["mean"] for p in sweep]
                ys = [p[meth][metric]["mean"] for p in sweep]
                es = [p[meth][metric]["se"] or 0.0 for p in sweep]
                ax.errorbar(xs, ys, yerr=es, color=color, ls=style, marker=marker, ms=3, lw=1, capsize=1.5,
                            label=f"{model}, {'ElasticKV' if meth == 'elastickv' else 'random'}")
            for p in presets:
                ax.plot(100 * p["elastickv"]["sparsity_k_region"]["mean"], p["elastickv"][metric]["mean"], marker="*",
                        color=color, ms=9, ls="none", mec="k", mew=0.5, zorder=5, label=f"{model}, {p['label']}" if metric == PANELS[0][0] else None)
    for ax, (metric, label) in zip(axes, PANELS):
        ax.set_xlabel("K sparsity, positions ≥ sink (%)")
        ax.set_ylabel(label.format(k=topk))
        ax.grid(alpha=0.3)
    axes[0].axhline(0, color="k", lw=0.5)
    axes[2].set_yscale("symlog", linthresh=1e-3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 1.12), frameon=False)
    fig.suptitle("Proxy attention on real K/V (queries = the last keys; simulation)", y=1.18, fontsize=8)
    fig.tight_layout()
    pc.save(fig, "fig7_attention_haze")


if __name__ == "__main__":
    sys.exit(pc.main_guard(main))
