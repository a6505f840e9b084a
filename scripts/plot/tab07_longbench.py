#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Tables 7-8 (LaTeX): LongBench-v2 multiple choice, overall (Table 7) and per domain (Table 8), baseline and
ElasticKV, mean ± std over seeds. Reads results/longbench/<model>.json (scripts/eval/longbench_v2_eval.py).
When no LongBench result is archived (the data set needs the Hugging Face hub), the table and the sentence
say so instead of showing numbers -> paper/generated/tab07_longbench.tex."""

import argparse
import json
import sys

import textable as tt


def pm(cell: dict, metric: str = "accuracy") -> str:
    if not cell or metric not in cell:
        return "--"
    return f"{cell[metric]['mean']:.1f} $\\pm$ {cell[metric]['std']:.1f}"


def main() -> None:
    folder = tt.ROOT / "results" / "longbench"
    aggs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    aggs = [a for a in aggs if a.get("kind") == "aggregate"]
    if not aggs:
        table = tt.tabular("l", ["LongBench-v2"], [["not run: the data set is not reachable offline "
                                                    "(results/longbench/README.md)"]])
        sentence = (r"Table~\ref{tab:longbench} (LongBench-v2) was \textbf{not run}: the data set is distributed only through the "
                    r"Hugging Face hub, which the machine that made these results could not reach. "
                    r"\texttt{scripts/eval/longbench\_v2\_eval.py} runs them from the hub or a local copy "
                    r"(\texttt{results/longbench/README.md}); its scoring is tested on a synthetic fixture only.")
        tt.write("tab07_longbench", table, {"TSevenSentence": sentence}, "scripts/plot/tab07_longbench.py")
        return
    rows, parts = [], []
    for a in aggs:
        d = a["data"]
        for name, r in d["rows"].items():
            m = r["mean"]
            rows.append([tt.esc(d["model"]), tt.esc(name), pm(m["overall"]), pm(m["overall"], "accuracy_lenient"),
                         *[pm(m["difficulty"].get(k, {})) for k in ("easy", "hard")],
                         *[pm(m["length"].get(k, {})) for k in ("short", "medium", "long")]])
        for name, v in d["vs_baseline"].items():
            parts.append(f"On {tt.esc(d['model'])}, {tt.esc(name)} changes accuracy by "
                         f"{v['delta_accuracy_pp']['mean']:+.1f} $\\pm$ {v['delta_accuracy_pp']['std']:.1f} points "
                         f"and gives the same letter as the baseline on {v['same_pred_pct']['mean']:.1f}\\,\\% of questions.")
    table = tt.tabular("llrrrrrrr", ["model", "row", "overall", "lenient", "easy", "hard", "short", "medium", "long"], rows)
    domains = sorted({k for a in aggs for r in a["data"]["rows"].values() for k in r["mean"]["domain"]})
    drows = [[tt.esc(a["data"]["model"]), tt.esc(n)] + [pm(r["mean"]["domain"].get(k, {})) for k in domains]
             for a in aggs for n, r in a["data"]["rows"].items()]
    table += "\n\\medskip\n\n" + tt.tabular("ll" + "r" * len(domains), ["model", "row", *map(tt.esc, domains)], drows)
    seeds = ", ".join(map(str, aggs[0]["data"]["seeds"]))
    sentence = f"Accuracy in \\%, mean $\\pm$ std over seeds {seeds}. " + " ".join(parts)
    tt.write("tab07_longbench", table, {"TSevenSentence": sentence}, "scripts/plot/tab07_longbench.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
