#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 19 (LaTeX): quality against REAL KV memory. Per panel (model, context): llama.cpp's f16/q8_0/q4_0
caches alone and under token eviction that frees its cells (a physical cap of ELASTICKV_KV_CELLS cells), KL
divergence against the f16 base, and how many times less KV memory than the f16 cache without eviction each row
really allocates (kv_real_mib of its record, from llama.cpp's log); ElasticKV and per-head eviction (logical,
flash attention off, against their own f16 base) as references.

Bold: the panel's Pareto front (no row has a lower KLD at the same real memory or less, memories within 1 %
counting as equal; Figure 12). Also, per panel, the lowest-KLD configuration with >= 4x and with >= 8x less KV memory than f16, beside q4_0
alone (printed, and as macros \\NumTNineteen<model>C<ctx>N<chunks>BestFour..., ...Qfour...).

Reads results/real_memory.json (scripts/eval/real_memory.py)
-> paper/generated/tab19_real_memory.tex and numbers-tab19_real_memory.tex."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import numpy as np
import pandas as pd
import textable as tt
from elastickv import frame
from plotcommon import pareto_front

RESULT = "real_memory.json"
LEVELS = (4, 8)  # "at least N times less KV memory than f16 without eviction"
CACHE_ORDER = ("f16", "q8_0", "q4_0")


def panel_label(p: dict) -> str:
    """Model, context and chunks: a model and context may have a wide 1-chunk panel and a narrower longer one."""
    return f"{p['model']} c{p['ctx']} n{p['chunks']}"


def first(es: pd.DataFrame, row: str) -> pd.Series | None:
    """The panel's first entry of that row name (None: not measured)."""
    hit = es[es["row"] == row]
    return hit.iloc[0] if len(hit) else None


def f16_mib(panel: dict, es: pd.DataFrame) -> float | None:
    """The real KV MiB of the f16 cache without eviction (its own row, else the panel's base: same settings)."""
    e = first(es, "f16-none")
    if e is not None:
        return e["kv_real_mib"]
    return panel["base"]["kv_real_mib"] if panel["base"] else None


def saving(e: pd.Series | pd.DataFrame, ref: float) -> float | pd.Series:
    """How many times less real KV memory than ``ref`` an entry allocated (per entry, given a frame)."""
    return ref / e["kv_real_mib"]


def describe(e: pd.Series) -> str:
    """A row in words: 'q4\\_0 + H2O (shared) 25\\%'."""
    cache = tt.esc(e["cache_type"])
    if e["method"] == "none":
        return f"{cache} alone"
    name = tt.POLICY_LABELS.get(e["method"], tt.esc(e["method"]))
    if e["method"] == "elastickv":
        return f"{name} {tt.esc(e['elastickv']['preset'])} ({cache}, fa off)"
    scope = f" ({e['scope']})" if e["scope"] else ""
    ref = ", fa off" if e["group"] == "reference" else ""
    return f"{cache} + {name}{scope}{ref} {100 * e['budget']:g}\\%"


def best_at(es: pd.DataFrame, ref: float, level: float) -> pd.Series | None:
    """The lowest-KLD row with at least ``level`` times less real KV memory than ``ref`` (None: none reaches it)."""
    ok = es[saving(es, ref) >= level]
    return ok.loc[ok["kld"].idxmin()] if len(ok) else None


def panels(agg: dict, df: pd.DataFrame) -> Iterator[tuple[dict, pd.DataFrame, float]]:
    """The panels with entries and an f16 reference: (panel, its entries, the f16 MiB)."""
    for p in agg["data"]["panels"]:
        es = df[df["panel"] == p["panel"]]
        ref = f16_mib(p, es) if len(es) else None
        if ref is not None:
            yield p, es, ref


def summary(agg: dict, df: pd.DataFrame) -> list[dict]:
    """Per panel: the f16 MiB, q4_0 alone, and the best row at each LEVEL (what the table script reports)."""
    return [{"panel": p, "f16_mib": ref, "q4_0": first(es, "q4_0-none"),
             "best": {lv: best_at(es, ref, lv) for lv in LEVELS}} for p, es, ref in panels(agg, df)]


def groups(es: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """The panel's table rows as (method label, cache, its entries): each cache alone, each capped method in the
    order the runs came (per cache, in CACHE_ORDER), then the references (logical eviction, flash attention off)."""
    out = [(f"{tt.esc(c)} alone", tt.esc(c), es[es["row"] == f"{c}-none"].head(1)) for c in CACHE_ORDER]
    cap = es[(es["group"] == "cap") & (es["method"] != "none")]
    for m, mg in cap.groupby("method", sort=False):
        for c in CACHE_ORDER:
            g = mg[mg["cache_type"] == c]
            scope = " (shared)" if len(g) and g["scope"].iloc[0] == "shared" else ""
            out.append((tt.POLICY_LABELS.get(m, tt.esc(m)) + scope, tt.esc(c), g))
    for m, g in es[es["group"] == "reference"].groupby("method", sort=False):
        which = tt.esc(g["elastickv"].iloc[0]["preset"]) if m == "elastickv" else "(per head)"
        out.append((f"{tt.POLICY_LABELS.get(m, tt.esc(m))} {which}, fa off", "f16", g))
    return [(label, cache, g) for label, cache, g in out if len(g)]


def cell(e: pd.Series, ref: float, front: set[str]) -> str:
    """KLD (times less KV memory than f16); bold on the panel's Pareto front."""
    kld = f"{max(e['kld'], 0.0) + 0.0:.4f}"  # an identical run prints -0.000001 (the base's 16-bit storage)
    return (f"\\textbf{{{kld}}}" if e["row"] in front else kld) + f" ({saving(e, ref):.1f}$\\times$)"


def main() -> None:
    agg = tt.load(RESULT)
    cfg = agg["config"]
    data = agg["data"]
    df = frame.entries(agg) if data["entries"] else pd.DataFrame(columns=["panel", "budget"])
    fractions = sorted(df["budget"].dropna().unique(), reverse=True)
    rows, rules, nums = [], set(), {}
    for p, es, ref in panels(agg, df):
        if rows:
            rules.add(len(rows))
        front = {e["row"] for e in pareto_front(es.to_dict("records"), lambda e: e["kv_real_mib"], lambda e: e["kld"])}
        es = es.assign(cell=es.apply(cell, axis=1, args=(ref, front)))
        for i, (label, cache, g) in enumerate(groups(es)):
            got = g.groupby("budget", dropna=False)["cell"].last()  # budget NaN: no eviction
            head = f"{tt.esc(panel_label(p))} ({ref:.1f} MiB)" if i == 0 else ""
            rows.append([head, label, cache] + [got.get(b, "--") for b in (np.nan, *fractions)])
        if p["pending"]:
            note = f"\\emph{{{len(p['pending'])} of {p['runs']} runs pending}}"
            rows.append(["", note, "", ""] + [""] * len(fractions))
    header = ["panel (f16 KV)", "method", "cache", "no eviction"] + [f"{100 * f:g}\\,\\% kept" for f in fractions]
    table = tt.tabular("lllr" + "r" * len(fractions), header, rows, rules)

    parts, lines = [], []
    for s in summary(agg, df):
        p = s["panel"]
        key = tt.macro_name(f"TNineteen{p['model']}C{p['ctx']}N{p['chunks']}")
        q4 = s["q4_0"]
        bits = []
        if q4 is not None:
            nums[key + "QfourKld"] = f"{q4['kld']:.4f}"
            nums[key + "QfourSaving"] = f"{saving(q4, s['f16_mib']):.2f}$\\times$"
            nums[key + "QfourMib"] = f"{q4['kv_real_mib']:.2f}"
            bits.append(f"q4\\_0 alone: KLD {nums[key + 'QfourKld']} at {nums[key + 'QfourSaving']} less KV memory")
            lines.append(f"{panel_label(p)}: q4_0 alone KLD {q4['kld']:.4f} at "
                         f"{saving(q4, s['f16_mib']):.2f}x ({q4['kv_real_mib']:.2f} MiB of {s['f16_mib']:.2f})")
        for lv in LEVELS:
            b = s["best"][lv]
            word = {4: "Four", 8: "Eight"}[lv]
            if b is None:
                nums[key + f"Best{word}"] = "none"
                bits.append(f"no configuration reaches {lv}$\\times$")
                lines.append(f"{panel_label(p)}: nothing reaches >= {lv}x")
                continue
            nums[key + f"Best{word}"] = describe(b)
            nums[key + f"Best{word}Kld"] = f"{b['kld']:.4f}"
            nums[key + f"Best{word}Saving"] = f"{saving(b, s['f16_mib']):.2f}$\\times$"
            nums[key + f"Best{word}Mib"] = f"{b['kv_real_mib']:.2f}"
            nums[key + f"Best{word}TopOne"] = f"{b['same_top_p_pct']:.1f}"
            bits.append(f"best at $\\ge${lv}$\\times$: {nums[key + f'Best{word}']} "
                        f"(KLD {nums[key + f'Best{word}Kld']}, {nums[key + f'Best{word}Saving']})")
            lines.append(f"{panel_label(p)}: best at >= {lv}x: {b['row']} KLD {b['kld']:.4f} "
                         f"top-1 {b['same_top_p_pct']:.1f}% at {saving(b, s['f16_mib']):.2f}x "
                         f"({b['kv_real_mib']:.2f} MiB)")
        chunks = f"{p['chunks']} chunk{'s' if p['chunks'] > 1 else ''}"
        parts.append(f"{tt.esc(panel_label(p))}, {chunks}: " + "; ".join(bits))
    pending = sum(len(p["pending"]) for p in data["panels"])
    nums["TNineteenSentence"] = (
        "KV memory is what llama.cpp allocated in each run (its log), never a budget; the saving is the f16 cache "
        "without eviction over it. Evicting policies free their cells under a cap of "
        "ELASTICKV\\_KV\\_CELLS cells, the least the hook accepts for the budget, -b = -ub = "
        f"{cfg['evict_every']}, sink {cfg['sink']}, flash attention on, against the f16 base; the best row is the "
        "lowest KLD among the rows measured in the panel (Table~\\ref{tab:real-memory} lists them). "
        + ". ".join(parts) + "."
        + (f" {pending} runs of the configured grid were still pending." if pending else ""))
    tt.write("tab19_real_memory", table, nums, "scripts/plot/tab19_real_memory.py")
    for line in lines:
        print(line)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
