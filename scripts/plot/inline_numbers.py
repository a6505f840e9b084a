#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The paper's inline comparisons, computed from results/ (never typed): for each model, how ElasticKV's
presets compare with llama.cpp's q8_0 and q4_0 caches in the same runs (KLD ratio, which is better, the real
memory of each), and the headline numbers of the abstract. Writes paper/generated/numbers-inline.tex."""

import argparse
import sys

import textable as tt
from elastickv import frame


def better(a: float, b: float) -> str:
    return "lower" if a < b else "higher"


def main() -> None:
    agg = tt.load("results_all.json")
    df = frame.entries(agg)
    models = df["model"].unique()  # first-appearance order
    # KLD and top-1 agreement per model and row
    kld = df.pivot_table(index="model", columns="row", values="kld", sort=False).loc[models]
    top = df.pivot_table(index="model", columns="row", values="same_top_p_pct", sort=False).loc[models]
    nums = {}
    for m, r in kld.iterrows():
        k = tt.macro_name(f"In{m}")
        nums[k + "SweetOverQeightKld"] = tt.num(r["sweet"] / r["q8_0"], 1) + r"$\times$"
        nums[k + "SweetOverQfourKld"] = tt.num(r["sweet"] / r["q4_0"], 2) + r"$\times$"
        nums[k + "SweetVsQeight"] = better(r["sweet"], r["q8_0"])
        nums[k + "SweetVsQfour"] = better(r["sweet"], r["q4_0"])
        nums[k + "SweetTopVsQeight"] = "higher" if top.at[m, "sweet"] > top.at[m, "q8_0"] else "lower"
    sweet, q8, q4 = (df[df["row"] == r] for r in ("sweet", "q8_0", "q4_0"))
    nums["InSweetNominalMin"] = tt.num(sweet["nominal"].min()) + r"$\times$"
    nums["InSweetNominalMax"] = tt.num(sweet["nominal"].max()) + r"$\times$"
    nums["InSweetBitmapMax"] = tt.num(sweet["bitmap"].max()) + r"$\times$"
    nums["InSweetKldMin"] = tt.num(sweet["kld"].min(), 4)
    nums["InSweetKldMax"] = tt.num(sweet["kld"].max(), 4)
    nums["InQeightResident"] = tt.num(q8["resident"].iloc[0]) + r"$\times$"
    nums["InQfourResident"] = tt.num(q4["resident"].iloc[0]) + r"$\times$"
    nums["InQeightKldMax"] = tt.num(q8["kld"].max(), 4)
    nums["InNumModels"] = str(len(models))
    nums["InCommit"] = tt.esc(agg["git"]["commit"][:10])
    nums["InUpstream"] = tt.esc(agg["upstream"]["commit"])
    nums["InDevice"] = tt.esc(agg["device"]["gpu"] or agg["device"]["cpu"])
    nums["InSweetVsQeightAll"] = ("on every model, ElasticKV's sweet preset disturbs the next-token distribution "
                                  "more than llama.cpp's q8\\_0 cache") if (kld["sweet"] > kld["q8_0"]).all() else \
        ("the comparison with llama.cpp's q8\\_0 cache depends on the model (see Table~\\ref{tab:ppl})")
    # decode speed with the physical cap against without (scripts/bench/decode_overhead.py --cap)
    cap = tt.load("bench/cap_speed_cpu.json")
    sentences = []  # one per measured depth
    for depth, e in cap["metrics"]["overhead"].items():
        c = e["capped"]
        env = cap["settings"]["variants"]["capped"]
        spread = (f", rounds from {tt.num(1 + c['overhead_pct_min'] / 100, 2)} to {tt.num(1 + c['overhead_pct_max'] / 100, 2)}"
                  if c["rounds"] > 1 else "")
        sentences.append(
            f"Decode at depth {int(depth):,} through {int(env['ELASTICKV_KV_CELLS']):,} cells "
            f"(streaming, {int(env['ELASTICKV_BUDGET']):,} positions kept) takes {tt.num(c['ratio_mean'], 2)}$\\times$ "
            f"the time per token of the uncapped cache (llama-bench, {c['rounds']} interleaved rounds of "
            f"{cap['settings']['n_gen']} tokens{spread}; {tt.esc(cap['device']['cpu'] or '')}, "
            f"{cap['settings']['threads']} threads).")
    nums["InCapSpeedSentence"] = " ".join(sentences)
    tt.write("inline", "", nums, "scripts/plot/inline_numbers.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
