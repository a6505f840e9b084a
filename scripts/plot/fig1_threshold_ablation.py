#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 1: threshold ablation: KL divergence and PPL change against sparsity as the scale grows.
Reads results/f4_thresh_ablation_results.json -> paper/figures/fig1_threshold_ablation.{pdf,png}."""

import argparse
import sys

import plotcommon as pc


def main() -> None:
    agg = pc.load("f4_thresh_ablation_results.json")
    rows = [e for e in agg["data"]["entries"] if e["row"] != "baseline"]
    sweep = sorted((e for e in rows if e["row"].startswith("s")), key=lambda e: e["sparsity_k"])
    others = [e for e in rows if not e["row"].startswith("s")]
    fig, (a, b) = pc.plt.subplots(1, 2, figsize=(6.4, 2.4))
    sp = lambda e: 100 * (e["sparsity_k"] + e["sparsity_v"]) / 2  # noqa: E731
    a.plot([sp(e) for e in sweep], [e["kld"]["value"] for e in sweep], "o-", color="C0", label="scale sweep (K = V)")
    for e in sweep:
        a.annotate(e["row"][1:], (sp(e), e["kld"]["value"]), textcoords="offset points", xytext=(3, -8), fontsize=6)
    for i, e in enumerate(others):
        a.plot(sp(e), e["kld"]["value"], "s", color=f"C{i + 1}", label=e["row"])
    a.set_yscale("log")
    a.set_xlabel("sparsity, all cells (%)")
    a.set_ylabel("KL divergence vs f16")
    a.legend(frameon=False)
    b.errorbar([sp(e) for e in sweep], [e["ppl_delta_pct"] for e in sweep],
               yerr=[100 * e["ppl"]["stderr"] / e["ppl"]["value"] for e in sweep], fmt="o-", color="C0", capsize=2)
    b.axhline(0, color="gray", lw=0.5)
    b.set_xlabel("sparsity, all cells (%)")
    b.set_ylabel("ΔPPL vs f16 (%), ± PPL error")
    e0 = rows[0]
    fig.suptitle(f"{e0['model']}, WikiText-2 test, c={e0['ctx']}, {e0['chunks']} chunks", fontsize=8)
    pc.save(fig, "fig1_threshold_ablation")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(pc.main_guard(main))
