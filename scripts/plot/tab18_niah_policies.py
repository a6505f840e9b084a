#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 18 (LaTeX): needle-in-a-haystack per policy at one matched budget: exact-match cells per context
length (of the grid's depths), at the interior depths (needle neither in the sinks nor at the very end) and in
total, with the fraction each hook row really kept when the answer began (token policies: cells per layer and
KV head; ElasticKV: K/V entries, sinks included).

Reads results/niah_policies/<model>.json (scripts/eval/f5_niah.py --config table18_niah_policies)
-> paper/generated/tab18_niah_policies.tex and numbers-tab18_niah_policies.tex (\\NumTEighteenSentence, ...)."""

import argparse
import sys

import pandas as pd
import textable as tt
from elastickv import frame

SUBDIR = "niah_policies"


def kept_at_answer(cells: pd.DataFrame) -> pd.Series:
    """Mean kept fraction per row over its cells after the last pass before the answer (rows without: hook off)."""
    at = cells.loc[cells["at_answer"].astype(bool), ["row", "at_answer"]]
    kept = 1 - (at["at_answer"].str["sparsity_k_all"] + at["at_answer"].str["sparsity_v_all"]) / 2
    return kept.groupby(at["row"]).mean()


def main() -> None:
    aggs = tt.niah_aggregates(SUBDIR, "scripts/eval/f5_niah.py --config table18_niah_policies")
    lengths = sorted({L for a in aggs for L in a["data"]["lengths"]})
    rows, rules, parts, nums, checked = [], set(), [], {}, []
    for a in aggs:
        d = a["data"]
        if rows:
            rules.add(len(rows))
        interior = [f"{x:g}" for x in d["depths"] if 0 < x < 1]
        n_depths = len(d["depths"])
        cells = frame.entries(d["cells"])
        kept_by_row = kept_at_answer(cells)
        said = []
        for i, row in enumerate(d["rows"]):
            s = d["scores"][row]
            inner = sum(s["per_depth"][x] for x in interior)
            n_inner = len(interior) * len(d["lengths"])
            kept = kept_by_row.get(row)
            rows.append([tt.esc(d["model"]) if i == 0 else "", tt.POLICY_LABELS.get(row, tt.esc(row))] +
                        [f"{s['per_length'][str(L)]}/{n_depths}" if str(L) in s["per_length"] else "--"
                         for L in lengths] +
                        [f"{inner}/{n_inner}", f"{s['correct']}/{s['total']}",
                         "--" if pd.isna(kept) else f"{100 * kept:.0f}"])
            key = tt.macro_name(f"TEighteen{d['model']}{row}")
            nums[key] = f"{s['correct']}/{s['total']}"
            nums[key + "Interior"] = f"{inner}/{n_inner}"
            said.append(f"{tt.POLICY_LABELS.get(row, tt.esc(row))} {inner}/{n_inner}")
        hook = cells[cells["row"] != "baseline"]
        in_sink = hook["needle_in_sink"].eq(True)
        checked.append(hook[~in_sink])
        # a needle that starts in the sinks can end beyond them: those tokens are not protected
        sink = hook[in_sink]
        beyond = sink["needle_tokens"].str[1] - sink["needle_tokens"].str[0] - sink["needle_tokens_in_sink"]
        outside = sorted(set(beyond.astype(int)))
        tail = (f"; at the first depth the needle starts in the sinks, with {' or '.join(map(str, outside))} of its "
                "tokens beyond them" if outside else "")
        parts.append(f"{tt.esc(d['model'])} (lengths {', '.join(map(str, d['lengths']))}): " + ", ".join(said) + tail)
    cfg = aggs[0]["config"]
    # the hook must have acted on the needle before the answer (SPEC §2): count the cells where it did
    hook_cells = pd.concat(checked)
    acted = hook_cells["needle_thresholded_before_answer"].eq(True).sum()
    budgets = {r["budget"] for r in cfg["rows"] if "budget" in r}
    if len(budgets) != 1:
        raise ValueError(f"Table 18 compares the policies at one budget; the config has {sorted(budgets)}")
    budget = str(budgets.pop())
    if budget.endswith("%"):
        budget = budget[:-1]
    elif float(budget) < 1:
        budget = f"{100 * float(budget):g}"
    else:
        raise ValueError(f"Table 18 reads a budget as a kept fraction; the config gives {budget} cells")
    nums["TEighteenBudget"] = budget
    depths = ", ".join(f"{100 * x:g}" for x in cfg["depths"])
    nums["TEighteenSentence"] = (
        f"Needles found at the interior depths ({', '.join(f'{100 * x:g}' for x in cfg['depths'] if 0 < x < 1)}"
        "\\,\\% of the haystack), where a policy has to choose what to keep: " + "; ".join(parts) + ". "
        f"The grid has the depths {depths}\\,\\% and the same needles as Table~\\ref{{tab:niah}}; flash attention "
        f"{cfg['flash_attn']} for every row, -b = -ub = {cfg['evict_every']}: in {acted} of the {len(hook_cells)} "
        "cells of the hook rows whose needle lies outside the sinks, the last pass before the first answer "
        "token covered the needle.")
    header = (["model", "row"] + [f"{L} tok." for L in lengths]
              + ["interior", "total", "kept \\%"])
    table = tt.tabular("ll" + "r" * (len(lengths) + 3), header, rows, rules)
    tt.write("tab18_niah_policies", table, nums, "scripts/plot/tab18_niah_policies.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
