#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 8: (a, b) where the entries and the L2 energy of real K and V lie in bands of |x| / tau (ElasticKV
zeroes the bands below 1, shaded); (c, d) ElasticKV against H2O, ScissorHands and StreamingLLM token eviction
replayed at the same number of stored values: L2 energy removed and proxy-attention output error.

Reads results/supplementary/tau_band_energy.json (scripts/analysis/tau_band_energy.py) and
results/supplementary/eviction_replay.json (scripts/analysis/eviction_replay.py); writes
paper/figures/fig8_energy_eviction.{pdf,png}.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import plotcommon as pc

BANDS = "supplementary/tau_band_energy.json"
EVICTION = "supplementary/eviction_replay.json"
SERIES = (("k", "entries", "K entries", "#9ecae1"), ("k", "l2", "K L2 energy", "#08519c"),
          ("v", "entries", "V entries", "#fdae6b"), ("v", "l2", "V L2 energy", "#a63603"))
METHOD_NAMES = {"elastickv": "ElasticKV", "h2o": "H2O", "scissorhands": "Scissor-\nHands",
                "streamingllm": "Streaming-\nLLM"}


def bands_panel(ax, bands: dict, model: str) -> None:
    d = bands["data"]["models"][model]
    labels = bands["data"]["bands"]
    edges = bands["data"]["edges"]
    x = np.arange(len(labels))
    w = 0.2
    for i, (t, kind, name, color) in enumerate(SERIES):
        vals = 100 * np.asarray(d["tensors"][t]["pooled"][kind])
        ax.bar(x + (i - 1.5) * w, np.maximum(vals, 1e-4), w, color=color, label=name)
    n_below = sum(1 for hi in edges[1:] if hi is not None and hi <= 1.0)
    ax.axvspan(-0.5, n_below - 0.5, color="0.85", zorder=0, lw=0)
    ax.text(-0.4, 60, "zeroed (|x| < τ)", fontsize=7, va="top")
    ax.set_xticks(x, labels, rotation=30)
    ax.set_yscale("log")
    ax.set_ylim(1e-2, 2e3)  # headroom above 100 % for the legend
    ax.set_xlabel("|x| / τ band")
    ax.set_ylabel("share (%)")
    ax.set_title(f"{model}: τ bands (K {d['tensors']['k']['scale']}, V {d['tensors']['v']['scale']} × mean|x|)")
    ax.grid(alpha=0.3, axis="y")


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    bands = pc.load(BANDS)
    ev = pc.load(EVICTION)
    models = list(bands["data"]["models"])
    fig, axes = pc.plt.subplots(2, 2, figsize=(7.2, 5.0))
    for ax, model in zip(axes[0], models[:2]):
        bands_panel(ax, bands, model)
    axes[0][0].legend(loc="upper right", ncol=2, fontsize=6)

    ev_models = list(ev["data"]["models"])
    methods = list(ev["data"]["models"][ev_models[0]]["methods"])
    x = np.arange(len(methods))
    w = 0.8 / (2 * len(ev_models))
    ax_e, ax_o = axes[1]
    for mi, model in enumerate(ev_models):
        m = ev["data"]["models"][model]["methods"]
        for ti, (t, color) in enumerate((("k", "#08519c"), ("v", "#a63603"))):
            off = (2 * mi + ti - (len(ev_models) * 2 - 1) / 2) * w
            vals = [100 * m[name][f"pooled_energy_{t}"] for name in methods]
            ax_e.bar(x + off, vals, w, color=color, alpha=1.0 if mi == 0 else 0.5,
                     label=f"{model} {t.upper()}")
        off = (mi - (len(ev_models) - 1) / 2) * (0.8 / len(ev_models))
        ax_o.bar(x + off, [m[name]["attn_out"]["mean"] for name in methods], 0.8 / len(ev_models),
                 yerr=[m[name]["attn_out"]["se"] or 0.0 for name in methods], capsize=2,
                 color=("#4c72b0", "#dd8452", "#55a868")[mi % 3], label=model)
    for ax in (ax_e, ax_o):
        ax.set_xticks(x, [METHOD_NAMES.get(name, name) for name in methods])
        ax.grid(alpha=0.3, axis="y")
    ax_e.set_yscale("log")
    ax_e.set_ylim(0.1, 500)  # headroom for the legend
    ax_e.set_ylabel("L2 energy removed, positions ≥ sink (%)")
    ax_e.set_title("same stored values as ElasticKV sweet")
    ax_e.legend(fontsize=6, ncol=2)
    ax_o.set_ylabel("proxy attention output rel. error")
    ax_o.set_title("last-64-key proxy queries (simulation)")
    ax_o.legend(fontsize=6)
    fig.tight_layout()
    pc.save(fig, "fig8_energy_eviction")


if __name__ == "__main__":
    sys.exit(pc.main_guard(main))
