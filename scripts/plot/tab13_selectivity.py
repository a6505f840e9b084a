#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 13 (LaTeX): selectivity metrics of the models' real K and V before ElasticKV, after it (the hook's own
output, sweet preset) and after random zeroing of as many entries per layer, KV head and tensor (the control).

A row of the data is one cached token of one KV head (head_dim values), positions >= SINK only. SPR = peak-to-mean
ratio max|x| / mean|x| (zeros count in the mean); kurt. = Pearson kurtosis m4 / m2^2 about the row mean (Gaussian
3); Gini = Gini coefficient of |x|; top-10% E = share of the row's L2 energy in its ceil(0.1 d) largest entries;
zero = fraction of exact zeros; nnz/32 = non-zeros per aligned 32-value block, mean (mode of the histogram). Each
metric: mean over a unit's rows, then mean over layers x KV heads (shown).

Reads results/f2_spr_real_kv_results.json (scripts/analysis/f2_spr_real_kv.py)
-> paper/generated/tab13_selectivity.tex and numbers-tab13_selectivity.tex (\\NumTThirteenSentence, ...)."""

import argparse
import sys

import pandas as pd
import textable as tt

RESULT = "f2_spr_real_kv_results.json"
STATES = (("before", "before"), ("after", "ElasticKV"), ("random", "random"))
NCOLS = 8
RAISED = (("spr", "SPR"), ("kurtosis", "kurtosis"), ("gini", "Gini"), ("top10_energy", "top-10\\% energy"))


def model_row(model: str, ncols: int) -> list[str]:
    """A row naming the model above its group of rows (keeps the table narrow)."""
    return [f"\\multicolumn{{{ncols}}}{{l}}{{\\textit{{{tt.esc(model)}}}}}"]


def listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def block_cell(c: dict) -> str:
    hist = c.get("block_nnz_hist") or []
    mode = max(range(len(hist)), key=lambda i: hist[i]) if hist else None
    return tt.num(c["block_nnz"]["mean"], 1) + ("" if mode is None else f" ({mode})")


def main() -> None:
    agg = tt.load(RESULT)
    cfg = agg["config"]
    models = agg["data"]["models"]
    top_pct = f"{100 * cfg['top_fraction']:.0f}"
    rows, rules, nums = [], set(), {}
    for mi, (model, md) in enumerate(models.items()):
        if mi:
            rules.add(len(rows))
        rows.append(model_row(model, NCOLS))
        for ti, (t, td) in enumerate(md["tensors"].items()):
            if ti:
                rules.add(len(rows))
            first_t = True
            for st, st_name in STATES:
                c = td[st]
                rows.append([t.upper() if first_t else "", st_name,
                             tt.num(c["spr"]["mean"], 2), tt.num(c["kurtosis"]["mean"], 2), tt.num(c["gini"]["mean"], 3),
                             tt.num(c["top10_energy"]["mean"], 3), tt.num(c["zero_frac"]["mean"], 3), block_cell(c)])
                first_t = False
    header = ["", "state", "SPR", "kurt.", "Gini", f"top-{top_pct}\\% E", "zero", f"nnz/{cfg['block']}"]
    table = tt.tabular("ll" + "r" * (NCOLS - 2), header, rows, rules)

    # inline numbers and the sentence; the change of each raised metric per model and tensor, paired
    deltas = pd.DataFrame([{"after": td["delta_after"][key]["mean"], "random": td["delta_random"][key]["mean"]}
                           for md in models.values() for td in md["tensors"].values() for key, _ in RAISED],
                          columns=["after", "random"])
    n_cases, n_up, n_rand_more = len(deltas), (deltas["after"] > 0).sum(), (deltas["random"] > deltas["after"]).sum()
    mism = []
    spr_parts = []
    for model, md in models.items():
        k = tt.macro_name(f"TThirteen{model}")
        for t, td in md["tensors"].items():
            kt = k + t.upper()
            nums[kt + "SprBefore"] = tt.num(td["before"]["spr"]["mean"], 2)
            nums[kt + "SprAfter"] = tt.num(td["after"]["spr"]["mean"], 2)
            nums[kt + "SprRandom"] = tt.num(td["random"]["spr"]["mean"], 2)
            nums[kt + "Zero"] = f"{100 * td['after']['zero_frac']['mean']:.1f}\\%"
            spr_parts.append(f"{nums[kt + 'SprBefore']} to {nums[kt + 'SprAfter']} (random: {nums[kt + 'SprRandom']}) "
                             f"for {t.upper()} of {tt.esc(model)}")
        mism += list(md.get("hook_vs_reference_mismatches", {}).values())
    nums["TThirteenMismatches"] = str(sum(mism)) if mism else "--"
    d_ex = "(d-1)/d"
    s = (f"A data row is one cached token of one KV head (its $d$ values, positions $\\ge {cfg['sink']}$ only). SPR is "
         f"the peak-to-mean ratio $\\max|x|/\\mathrm{{mean}}|x|$ (zeros count in the mean; 1 flat, $d$ one entry), "
         f"kurt.\\ the Pearson kurtosis $m_4/m_2^2$ about the row mean (Gaussian 3, not excess), Gini the Gini "
         f"coefficient of $|x|$ (0 all equal, ${d_ex}$ one entry), top-{top_pct}\\% E the share of the row's L2 energy "
         f"in its $\\lceil {cfg['top_fraction']:g}d\\rceil$ largest-$|x|$ entries, zero the fraction of exact zeros, and "
         f"nnz/{cfg['block']} the non-zeros per aligned {cfg['block']}-value block, mean (most frequent count); each is "
         f"averaged over a unit's rows, then over layers $\\times$ KV heads. ElasticKV is the hook's own output of the "
         f"pass (sweet, $s_K={cfg['scale_k']:g}$, $s_V={cfg['scale_v']:g}$; "
         f"{nums['TThirteenMismatches']} entries differ from the numpy reference), random zeroes as many entries per "
         f"layer, head and tensor uniformly among the non-zero entries of positions $\\ge {cfg['sink']}$ "
         f"(seed {cfg['random_seed']}). ")
    metric_names = listing([n for _, n in RAISED])
    if n_up == n_cases:
        s += f"Zeroing raises {metric_names} mechanically: ElasticKV takes SPR from {'; '.join(spr_parts)}"
    else:
        s += (f"ElasticKV raises {metric_names} in {n_up} of {n_cases} model, tensor and metric cases; SPR goes from "
              f"{'; '.join(spr_parts)}")
    if n_rand_more == n_cases:
        s += (", and random zeroing of as many entries raises all four more than ElasticKV in every model and "
              "tensor. ")
    else:
        s += (f"; random zeroing of as many entries raises them more than ElasticKV in {n_rand_more} of {n_cases} "
              f"cases. ")
    s += ("These metrics therefore describe the stored vectors, not the model's attention: a higher value after "
          "zeroing is not evidence of more selective attention.")
    nums["TThirteenSentence"] = s
    tt.write("tab13_selectivity", table, nums, "scripts/plot/tab13_selectivity.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
