#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 9: KL divergence against the kept fraction each run really reached, one line per policy of the
hook (Table 16), with llama.cpp's q8_0 and q4_0 caches of Table 4 (same model and context, flash attention
on, against the f16 baseline of that setting) as horizontal references.
Reads results/head_to_head.json and results/long_context_results.json -> paper/figures/fig9_head_to_head.{pdf,png}."""

import argparse
import sys

import plotcommon as pc

STYLE = {"elastickv": ("k", "o", "-"), "streaming": ("C0", "s", "--"), "h2o": ("C1", "^", "--"),
         "scissorhands": ("C2", "v", "--"), "pyramidkv": ("C3", "D", "--"), "random_tokens": ("C7", "x", ":"),
         "random_entries": ("C5", "+", ":"), "topk_entries": ("C4", "P", "-.")}


def main() -> None:
    agg = pc.load("head_to_head.json")
    cfg = agg["config"]
    entries = agg["data"]["entries"]
    models = list(dict.fromkeys(e["model"] for e in entries))
    fig, axes = pc.plt.subplots(1, len(models), figsize=(6.4 if len(models) == 1 else 9.6, 3.0), squeeze=False)
    anchors = {}
    try:
        long = pc.load("long_context_results.json")
        for e in long["data"]["entries"]:
            if e["ctx"] == cfg["ctx"] and e["row"] in ("q8_0", "q4_0") and e.get("kld"):
                anchors[(e["model"], e["row"])] = e["kld"]["value"]
    except pc.MissingResult:
        pass
    for ax, model in zip(axes[0], models):
        for p in ["elastickv"] + list(cfg["policies"]):
            es = sorted((e for e in entries if e["model"] == model and e["policy"] == p), key=lambda e: e["kept"])
            if not es:
                continue
            c, m, ls = STYLE.get(p, ("C9", ".", "-"))
            ax.plot([100 * e["kept"] for e in es], [e["kld"]["value"] for e in es], color=c, marker=m, ls=ls,
                    ms=4, lw=1.2, label=p)
        for row, ls in (("q8_0", (0, (4, 2))), ("q4_0", (0, (1, 2)))):
            v = anchors.get((model, row))
            if v is not None:
                ax.axhline(v, color="grey", ls=ls, lw=0.9)
                ax.text(2, v * 1.08, f"llama.cpp {row} cache (fa on)", fontsize=6, va="bottom", color="grey")
        ax.set_yscale("log")
        ax.set_xlabel("kept (% of cells or entries, measured)")
        ax.set_ylabel("KL divergence vs f16")
        ax.set_xlim(0, 112)
        ax.set_title(f"{model}, c={cfg['ctx']}, {cfg['chunks'][model]} chunk(s), fa {cfg['flash_attn']}", fontsize=8)
    axes[0][0].legend(fontsize=6, frameon=False, ncol=2)
    pc.save(fig, "fig9_head_to_head")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(pc.main_guard(main))
