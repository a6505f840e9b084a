#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 5: sink ablation: KL divergence, top-1 agreement and sparsity against SINK (sweet preset).
Reads results/sink_ablation.json -> paper/figures/fig5_sink_ablation.{pdf,png}."""

import argparse
import sys

import plotcommon as pc


def main() -> None:
    agg = pc.load("sink_ablation.json")
    rows = sorted((e for e in agg["data"]["entries"] if e["elastickv"]), key=lambda e: e["elastickv"]["sink"])
    x = list(range(len(rows)))
    fig, (a, b) = pc.plt.subplots(1, 2, figsize=(6.4, 2.3))
    a.errorbar(x, [e["kld"]["value"] for e in rows], yerr=[e["kld"]["stderr"] for e in rows], fmt="o-", capsize=2)
    a.set_yscale("log")
    a.set_ylabel("KL divergence vs f16")
    b.plot(x, [e["same_top_p_pct"]["value"] for e in rows], "o-", color="C1", label="top-1 agreement (%)")
    b.plot(x, [100 * e["sparsity_k"] for e in rows], "s--", color="C2", label="K sparsity, all cells (%)")
    b.legend(frameon=False)
    for ax in (a, b):
        ax.set_xticks(x)
        ax.set_xticklabels([str(e["elastickv"]["sink"]) for e in rows])
        ax.set_xlabel("SINK (protected positions)")
    e0 = rows[0]
    fig.suptitle(f"{e0['model']}, sweet preset, c={e0['ctx']}, {e0['chunks']} chunks", fontsize=8)
    pc.save(fig, "fig5_sink_ablation")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(pc.main_guard(main))
