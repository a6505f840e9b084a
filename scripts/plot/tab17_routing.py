#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 17 (LaTeX): routing suite accuracy per policy and compression, with the Global Eviction Ratio (GER)
of the answer-relevant tokens, head consensus, and ElasticKV's element analogue.

Reads results/routing_sweep.json (scripts/eval/routing_sweep.py)
-> paper/generated/tab17_routing.tex and numbers-tab17_routing.tex (\\NumTSeventeenSentence, ...)."""

import argparse
import math
import sys

import pandas as pd
import textable as tt
from elastickv import frame


def cell(s: pd.Series, p: str) -> str:
    if pd.isna(s["accuracy"]):  # no run at this level
        return "--"
    acc = f"{100 * s['accuracy']:.0f}"
    g = s["element_ger_max"] if p == "elastickv" else s["ger"]
    out = acc + " / " + ("--" if pd.isna(g) else f"{g:.2f}")
    if p == "elastickv" and pd.notna(s.get("kept_entries_k")):  # its scales miss the target: say what it kept
        out += f" ({100 * s['kept_entries_k']:.0f}\\%)"
    return out


def main() -> None:
    agg = tt.load("routing_sweep.json")
    cfg = agg["config"]
    summ = frame.entries(agg, key="summary")
    levels = sorted(set(summ.loc[summ["policy"] != "baseline", "kept"]), reverse=True)
    base = summ[summ["policy"] == "baseline"].iloc[0]
    hc = summ.groupby("policy")["head_consensus"].mean()  # NaN: no head consensus (or no run)
    rows, worst, nums = [], [], {}
    rows.append(["hook off"] + [f"{100 * base['accuracy']:.0f}"] + ["" for _ in levels] + ["--"])
    for p in cfg["policies"]:
        by = summ[summ["policy"] == p].set_index("kept").reindex(levels)  # a NaN row where a level has no run
        rows.append([tt.POLICY_LABELS.get(p, tt.esc(p)), ""] + [cell(by.loc[k], p) for k in levels]
                    + ["--" if pd.isna(hc.get(p)) else f"{hc[p]:.2f}"])
        lo = by.loc[min(levels)]
        if pd.notna(lo["accuracy"]):
            worst.append(f"{tt.POLICY_LABELS.get(p, p)} {100 * lo['accuracy']:.0f}\\,\\%")
    header = (["policy", "off"] + [f"{100 * (1 - k):.0f}\\% compr." for k in levels] + ["head cons."])
    table = tt.tabular("ll" + "r" * (len(levels) + 1), header, rows)

    nums["TSeventeenBaseAcc"] = f"{100 * base['accuracy']:.0f}"
    corr = agg["data"]["pearson_ger_error"]
    rs = [f"{tt.POLICY_LABELS.get(p, p)} {r:.2f}" for p, r in corr.items() if r is not None and not math.isnan(r)]
    # policies that already lost most of their accuracy at the mildest level while GER stayed near zero
    first = max(levels)
    early = summ[~summ["policy"].isin(["baseline", "elastickv"]) & (summ["kept"] == first)
                 & (summ["ger"] < 0.05) & (summ["accuracy"] <= base["accuracy"] / 2)]
    if not early.empty:
        nums["TSeventeenEarlyCollapse"] = ", ".join(tt.POLICY_LABELS.get(p, p) for p in early["policy"])
    by_task = base["by_task"]
    tasks = ", ".join(f"{tt.esc(t)} {100 * v:.0f}" + "\\,\\%" for t, v in by_task.items())
    s = (f"{agg['data']['items']} items ({tasks} "
         f"correct with the hook off), {tt.esc(cfg['model'])}, sink {cfg['sink']}, passes every "
         f"{cfg['evict_every']} tokens. Cells: accuracy (\\%) / GER (token policies) or the element analogue "
         f"(ElasticKV: answer tokens whose K row is $\\ge {cfg['element_min_zero']}$ zero in every KV head of some "
         f"layer; in parentheses the K entries it really kept, since its scales miss the targets). "
         f"At {100 * (1 - min(levels)):.0f}\\,\\% compression (target): " + ", ".join(worst) + ". "
         + (("Pearson $r$ between GER and error rate across compression levels: " + ", ".join(rs) + ". ")
            if rs else "")
         + ((f"{nums['TSeventeenEarlyCollapse']} lose at least half of the accuracy already at "
             f"{100 * (1 - first):.0f}\\,\\% compression with a GER below 0.05: there, answer tokens evicted from "
             "every head do not explain the failure. ") if not early.empty else "")
         + "With so few items per level the accuracies move in steps of "
         f"{100 / agg['data']['items']:.0f}\\,\\%; they show where accuracy collapses, not small differences.")
    nums["TSeventeenSentence"] = s
    tt.write("tab17_routing", table, nums, "scripts/plot/tab17_routing.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
