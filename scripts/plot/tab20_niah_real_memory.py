#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 20 (LaTeX): needle-in-a-haystack at real-memory points: per row (llama.cpp's caches alone, token eviction
that frees its cells through the smallest physical cap, alone and stacked with q8_0/q4_0), the needles found per
context length, at the interior depths and in total, and the real KV MiB of its runs (llama.cpp's own log, mean over
the row's cells per length) with the saving against the f16 baseline of the same length.

Reads results/niah_real_memory/<model>.json and the cell records it lists (scripts/eval/f5_niah.py --config
table20_niah_real_memory) -> paper/generated/tab20_niah_real_memory.tex and numbers-tab20_niah_real_memory.tex
(\\NumTTwentySentence, ...)."""

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import textable as tt  # noqa: E402
from elastickv import frame  # noqa: E402

SUBDIR = "niah_real_memory"


def kv_mib(cells: list[dict]) -> pd.DataFrame:
    """Mean real KV MiB of the cells per row and length (rows x lengths; NaN: no cell), from their records."""
    df = frame.entries(cells)
    df["kv_mib"] = [json.loads((tt.ROOT / r).read_text())["metrics"]["kv_mib"] for r in df["record"]]
    return df.pivot_table(index="row", columns="length", values="kv_mib", aggfunc="mean")


def main() -> None:
    aggs = tt.niah_aggregates(SUBDIR, "scripts/eval/f5_niah.py --config table20_niah_real_memory")
    lengths = sorted({L for a in aggs for L in a["data"]["lengths"]})
    rows, rules, parts, nums = [], set(), [], {}
    for a in aggs:
        d = a["data"]
        if rows:
            rules.add(len(rows))
        interior = [f"{x:g}" for x in d["depths"] if 0 < x < 1]
        n_depths = len(d["depths"])
        mib = kv_mib(d["cells"])
        savings = mib.loc["baseline"] / mib  # against the f16 baseline of the same length
        said = []
        for i, row in enumerate(d["rows"]):
            s = d["scores"][row]
            inner = sum(s["per_depth"][x] for x in interior)
            n_inner = len(interior) * len(d["lengths"])
            m, saving = mib.loc[row], savings.loc[row]
            rows.append([tt.esc(d["model"]) if i == 0 else "", tt.esc(row)] +
                        [f"{s['per_length'][str(L)]}/{n_depths}" if str(L) in s["per_length"] else "--"
                         for L in lengths] +
                        [f"{inner}/{n_inner}", f"{s['correct']}/{s['total']}"] +
                        [f"{m[L]:.2f} ({saving[L]:.1f}$\\times$)" if pd.notna(m.get(L)) else "--" for L in lengths])
            key = tt.macro_name(f"TTwenty{d['model']}{row}")
            nums[key] = f"{s['correct']}/{s['total']}"
            nums[key + "Interior"] = f"{inner}/{n_inner}"
            lo, hi = f"{saving.min():.1f}", f"{saving.max():.1f}"
            said.append(f"{tt.esc(row)} {inner}/{n_inner} ({lo if lo == hi else lo + '--' + hi}$\\times$ less KV memory)")
        parts.append(f"{tt.esc(d['model'])} (lengths {', '.join(map(str, d['lengths']))}): " + ", ".join(said))
    cfg = aggs[0]["config"]
    nums["TTwentySentence"] = (
        "Needles found at the interior depths, with the real KV memory against the f16 cache of the same prompt: "
        + "; ".join(parts) + ". "
        f"Flash attention {cfg['flash_attn']}, -b = -ub = {cfg['evict_every']}; evicting rows free their cells through "
        "the smallest cap the hook accepts for their budget at each prompt's context.")
    header = (["model", "row"] + [f"{L} tok." for L in lengths] + ["interior", "total"]
              + [f"KV MiB, {L} tok." for L in lengths])
    table = tt.tabular("ll" + "r" * (2 * len(lengths) + 2), header, rows, rules)
    tt.write("tab20_niah_real_memory", table, nums, "scripts/plot/tab20_niah_real_memory.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
