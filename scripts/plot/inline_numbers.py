#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The paper's inline comparisons, computed from results/ (never typed): for each model, how ElasticKV's
presets compare with llama.cpp's q8_0 and q4_0 caches in the same runs (KLD ratio, which is better, the real
memory of each), and the headline numbers of the abstract. Writes paper/generated/numbers-inline.tex."""

import argparse
import sys

import textable as tt


def better(a: float, b: float) -> str:
    return "lower" if a < b else "higher"


def main() -> None:
    agg = tt.load("results_all.json")
    E = agg["data"]["entries"]
    nums = {}
    models = list(dict.fromkeys(e["model"] for e in E))
    for m in models:
        sweet, q8, q4 = (tt.entry(E, model=m, row=r) for r in ("sweet", "q8_0", "q4_0"))
        k = tt.macro_name(f"In{m}")
        nums[k + "SweetOverQeightKld"] = tt.num(sweet["kld"]["value"] / q8["kld"]["value"], 1) + r"$\times$"
        nums[k + "SweetOverQfourKld"] = tt.num(sweet["kld"]["value"] / q4["kld"]["value"], 2) + r"$\times$"
        nums[k + "SweetVsQeight"] = better(sweet["kld"]["value"], q8["kld"]["value"])
        nums[k + "SweetVsQfour"] = better(sweet["kld"]["value"], q4["kld"]["value"])
        nums[k + "SweetTopVsQeight"] = "higher" if sweet["same_top_p_pct"]["value"] > q8["same_top_p_pct"]["value"] else "lower"
    sweet_all = [e for e in E if e["row"] == "sweet"]
    nums["InSweetNominalMin"] = tt.num(min(e["nominal"] for e in sweet_all)) + r"$\times$"
    nums["InSweetNominalMax"] = tt.num(max(e["nominal"] for e in sweet_all)) + r"$\times$"
    nums["InSweetBitmapMax"] = tt.num(max(e["bitmap"] for e in sweet_all)) + r"$\times$"
    nums["InSweetKldMin"] = tt.num(min(e["kld"]["value"] for e in sweet_all), 4)
    nums["InSweetKldMax"] = tt.num(max(e["kld"]["value"] for e in sweet_all), 4)
    q8_all = [e for e in E if e["row"] == "q8_0"]
    q4_all = [e for e in E if e["row"] == "q4_0"]
    nums["InQeightResident"] = tt.num(q8_all[0]["resident"]) + r"$\times$"
    nums["InQfourResident"] = tt.num(q4_all[0]["resident"]) + r"$\times$"
    nums["InQeightKldMax"] = tt.num(max(e["kld"]["value"] for e in q8_all), 4)
    nums["InNumModels"] = str(len(models))
    nums["InCommit"] = tt.esc(agg["git"]["commit"][:10])
    nums["InUpstream"] = tt.esc(agg["upstream"]["commit"])
    nums["InDevice"] = tt.esc(agg["device"]["gpu"] or agg["device"]["cpu"])
    all_sweet_worse_than_q8 = all(tt.entry(E, model=m, row="sweet")["kld"]["value"] >
                                  tt.entry(E, model=m, row="q8_0")["kld"]["value"] for m in models)
    nums["InSweetVsQeightAll"] = ("on every model, ElasticKV's sweet preset disturbs the next-token distribution "
                                  "more than llama.cpp's q8\\_0 cache") if all_sweet_worse_than_q8 else \
        ("the comparison with llama.cpp's q8\\_0 cache depends on the model (see Table~\\ref{tab:ppl})")
    # decode speed with the physical cap against without (scripts/bench/decode_overhead.py --cap)
    cap = tt.load("bench/cap_speed_cpu.json")
    for depth, e in cap["metrics"]["overhead"].items():
        c = e["capped"]
        env = cap["settings"]["variants"]["capped"]
        spread = (f", rounds from {tt.num(1 + c['overhead_pct_min'] / 100, 2)} to {tt.num(1 + c['overhead_pct_max'] / 100, 2)}"
                  if c["rounds"] > 1 else "")
        nums["InCapSpeedSentence"] = (
            f"Decode at depth {int(depth):,} through {int(env['ELASTICKV_KV_CELLS']):,} cells "
            f"(streaming, {int(env['ELASTICKV_BUDGET']):,} positions kept) takes {tt.num(c['ratio_mean'], 2)}$\\times$ "
            f"the time per token of the uncapped cache (llama-bench, {c['rounds']} interleaved rounds of "
            f"{cap['settings']['n_gen']} tokens{spread}; {tt.esc(cap['device']['cpu'] or '')}, "
            f"{cap['settings']['threads']} threads).")
    tt.write("inline", "", nums, "scripts/plot/inline_numbers.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
