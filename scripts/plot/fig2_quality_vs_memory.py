#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 2: quality against memory: KL divergence vs bits per stored value, ElasticKV beside llama.cpp's
q8_0 / q5_1 / q4_0 caches (same runs, c = 512). Filled markers: bytes really resident; hollow markers:
what ElasticKV would need in a bitmap sparse format that llama.cpp does not have.
Reads results/f7_compression_proof.json -> paper/figures/fig2_quality_vs_memory.{pdf,png}."""

import argparse
import sys

import plotcommon as pc


def main() -> None:
    agg = pc.load("f7_compression_proof.json")
    rows = [r for r in agg["data"]["rows"] if r["table"] == "Table 2" and r["row"] != "baseline"]
    model_names = sorted({r["model"] for r in rows})
    fig, axes = pc.plt.subplots(1, len(model_names), figsize=(3.2 * len(model_names), 2.5), squeeze=False)
    for ax, model in zip(axes[0], model_names):
        for i, r in enumerate(x for x in rows if x["model"] == model):
            c = f"C{i}"
            ax.plot(r["bits_per_value_resident"], r["kld"], "o", color=c, label=r["row"])
            if r["elastickv"]:
                ax.plot(r["bits_per_value_bitmap"], r["kld"], "o", mfc="none", color=c)
                ax.annotate("", xy=(r["bits_per_value_bitmap"], r["kld"]), xytext=(r["bits_per_value_resident"], r["kld"]),
                            arrowprops={"arrowstyle": "->", "color": c, "lw": 0.6, "ls": "--"})
        ax.set_yscale("log")
        ax.set_xlabel("bits per stored K/V value")
        ax.set_ylabel("KL divergence vs f16")
        ax.set_title(model)
        ax.invert_xaxis()
        ax.legend(frameon=False, fontsize=6)
    pc.save(fig, "fig2_quality_vs_memory")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(pc.main_guard(main))
