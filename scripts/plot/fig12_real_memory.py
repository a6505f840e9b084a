#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 12: KL divergence against the REAL KV memory of each run (kv_real_mib of its record, from
llama.cpp's log), log-log, one panel per (model, context) of Table 19. Colour: the cache type (f16, q8_0, q4_0);
marker: the method (the cache alone, or a token eviction that frees its cells under a physical cap); hollow
markers: the references (ElasticKV, per-head eviction: flash attention off, logical, f16 memory). The Pareto
front (no other row has a lower KLD at the same memory or less; memories within 1 % count as equal) is drawn as
a step line and its points ringed. The f16 cache without eviction (KLD ~ 0, not drawable on a log axis) is the
dotted vertical line, 4x and 8x less memory the dashed ones; the top axis reads the saving.
Reads results/real_memory.json -> paper/figures/fig12_real_memory.{pdf,png}."""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import plotcommon as pc
from matplotlib import ticker

COLORS = {"f16": "C0", "q8_0": "C1", "q4_0": "C2"}
MARKERS = {"none": "o", "streaming": "s", "h2o": "^", "scissorhands": "v", "random_tokens": "x",
           "pyramidkv": "P", "elastickv": "D"}
MIB_TICKS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]  # real KV MiB axis (a panel may span < 1 decade)
FLOOR = 1e-5  # KLD values at or below it are not drawn (log axis); they are the f16 no-eviction rows


def pareto(points: list[dict]) -> list[dict]:
    """The Pareto front of a panel (plotcommon.pareto_front): lowest KLD at each real KV memory or less, memories
    within 1 % counting as equal."""
    return pc.pareto_front(points, lambda e: e["kv_real_mib"], lambda e: e["kld"]["value"])


def main() -> None:
    agg = pc.load("real_memory.json")
    data = agg["data"]
    panels = [p for p in data["panels"] if any(e["panel"] == p["panel"] for e in data["entries"])]
    if not panels:
        raise pc.MissingResult("results/real_memory.json holds no finished row yet")
    n = len(panels)
    fig, axes = pc.plt.subplots(1, n, figsize=(3.4 * n + 0.4, 3.2), squeeze=False)
    seen_methods, seen_caches = {}, {}
    for ax, p in zip(axes[0], panels):
        es = [e for e in data["entries"] if e["panel"] == p["panel"]]
        f16 = next((e for e in es if e["row"] == "f16-none"), None)
        f16_mib = f16["kv_real_mib"] if f16 else p["base"]["kv_real_mib"]
        for e in es:
            v = e["kld"]["value"]
            if v <= FLOOR:
                continue
            c = COLORS.get(e["cache_type"], "k")
            mk = MARKERS.get(e["method"], ".")
            ref = e["group"] == "reference"
            kw = dict(marker=mk, s=22, zorder=3, linewidths=1.0)
            if mk in ("x", "+"):
                ax.scatter(e["kv_real_mib"], v, color=c, **kw)
            elif ref:
                ax.scatter(e["kv_real_mib"], v, facecolors="none", edgecolors=c, **kw)
            else:
                ax.scatter(e["kv_real_mib"], v, color=c, **kw)
            seen_methods.setdefault((e["method"], ref), e["scope"])
            seen_caches[e["cache_type"]] = c
        pts = [e for e in pareto(es) if e["kld"]["value"] > FLOOR]
        if pts:
            xs = [e["kv_real_mib"] for e in pts]
            ys = [e["kld"]["value"] for e in pts]
            ax.step(xs + [f16_mib], ys + [ys[-1]], where="post", color="k", lw=0.9, zorder=2, label="Pareto front")
            ax.scatter(xs, ys, s=70, facecolors="none", edgecolors="k", linewidths=0.8, zorder=4)
        ax.axvline(f16_mib, color="grey", ls=":", lw=0.9)
        for lv in (4, 8):  # the levels of Table 19's "best at >= Nx"
            ax.axvline(f16_mib / lv, color="grey", ls="--", lw=0.5, alpha=0.6)
        ax.text(f16_mib, 0.98, " f16, no eviction\n (KLD ~ 0)", transform=ax.get_xaxis_transform(), fontsize=6,
                va="top", ha="right", color="grey")
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo, hi = ax.get_xlim()
        ax.xaxis.set_major_locator(ticker.FixedLocator([t for t in MIB_TICKS if lo <= t <= hi]))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("real KV memory (MiB, llama.cpp log)")
        ax.set_ylabel("KL divergence vs f16")
        inv = (lambda m, r=f16_mib: r / np.maximum(m, 1e-12))
        top = ax.secondary_xaxis("top", functions=(inv, inv))
        top.set_xticks([1, 2, 4, 8, 16, 32])
        top.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
        top.xaxis.set_minor_locator(ticker.NullLocator())
        top.set_xlabel("times less KV memory than f16 without eviction", fontsize=7)
        pend = f", {len(p['pending'])} runs pending" if p["pending"] else ""
        ax.set_title(f"{p['model']}, c={p['ctx']}, {p['chunks']} chunk(s){pend}", fontsize=8)
        ax.grid(True, which="major", lw=0.3, alpha=0.5)
    handles = []
    for (m, ref), scope in seen_methods.items():
        label = "cache alone" if m == "none" else pc.POLICY_LABELS.get(m, m).replace("$", "")
        if scope:
            label += f" ({'per head' if scope == 'head' else scope})"
        if ref:
            label += ", fa off"
        handles.append(pc.plt.Line2D([], [], ls="", marker=MARKERS.get(m, "."), color="k",
                                     markerfacecolor="none" if ref else "k", label=label))
    for cache, c in sorted(seen_caches.items(), key=lambda kv: list(COLORS).index(kv[0]) if kv[0] in COLORS else 9):
        handles.append(pc.plt.Line2D([], [], ls="", marker="o", color=c, label=f"{cache} cache"))
    handles.append(pc.plt.Line2D([], [], color="k", lw=0.9, marker="o", markerfacecolor="none", ms=7,
                                 label="Pareto front"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=6, frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.04 * math.ceil(len(handles) / 6)))
    fig.tight_layout()
    pc.save(fig, "fig12_real_memory")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(pc.main_guard(main))
