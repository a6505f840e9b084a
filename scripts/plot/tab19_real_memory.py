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

import textable as tt
from plotcommon import pareto_front

RESULT = "real_memory.json"
LEVELS = (4, 8)  # "at least N times less KV memory than f16 without eviction"
CACHE_ORDER = ("f16", "q8_0", "q4_0")


def panel_label(p: dict) -> str:
    """Model, context and chunks: a model and context may have a wide 1-chunk panel and a narrower longer one."""
    return f"{p['model']} c{p['ctx']} n{p['chunks']}"


def f16_mib(panel: dict, entries: list[dict]) -> float | None:
    """The real KV MiB of the f16 cache without eviction (its own row, else the panel's base: same settings)."""
    e = tt.entry(entries, panel=panel["panel"], row="f16-none")
    if e is not None:
        return e["kv_real_mib"]
    return panel["base"]["kv_real_mib"] if panel["base"] else None


def saving(e: dict, ref: float) -> float:
    return ref / e["kv_real_mib"]


def describe(e: dict) -> str:
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


def best_at(entries: list[dict], ref: float, level: float) -> dict | None:
    """The lowest-KLD row with at least ``level`` times less real KV memory than ``ref`` (None: none reaches it)."""
    ok = [e for e in entries if saving(e, ref) >= level]
    return min(ok, key=lambda e: e["kld"]["value"]) if ok else None


def summary(agg: dict) -> list[dict]:
    """Per panel: the f16 MiB, q4_0 alone, and the best row at each LEVEL (what the table script reports)."""
    out = []
    for p in agg["data"]["panels"]:
        es = [e for e in agg["data"]["entries"] if e["panel"] == p["panel"]]
        ref = f16_mib(p, es)
        if ref is None or not es:
            continue
        out.append({"panel": p, "f16_mib": ref, "q4_0": tt.entry(es, row="q4_0-none"),
                    "best": {lv: best_at(es, ref, lv) for lv in LEVELS}})
    return out


def cell(e: dict | None, ref: float, front: set[str]) -> str:
    """KLD (times less KV memory than f16); bold on the panel's Pareto front."""
    if e is None:
        return "--"
    kld = f"{max(e['kld']['value'], 0.0) + 0.0:.4f}"  # an identical run prints -0.000001 (the base's 16-bit storage)
    return (f"\\textbf{{{kld}}}" if e["row"] in front else kld) + f" ({saving(e, ref):.1f}$\\times$)"


def main() -> None:
    agg = tt.load(RESULT)
    cfg = agg["config"]
    data = agg["data"]
    fractions = sorted({e["budget"] for e in data["entries"] if e["budget"] is not None}, reverse=True)
    rows, rules, nums = [], set(), {}
    for p in data["panels"]:
        es = [e for e in data["entries"] if e["panel"] == p["panel"]]
        ref = f16_mib(p, es)
        if ref is None or not es:
            continue
        if rows:
            rules.add(len(rows))
        first = True
        front = {e["row"] for e in pareto_front(es, lambda e: e["kv_real_mib"], lambda e: e["kld"]["value"])}
        groups = []  # (method label, cache, {fraction or None: entry})
        for c in CACHE_ORDER:
            alone = tt.entry(es, row=f"{c}-none")
            if alone:
                groups.append((f"{tt.esc(c)} alone", tt.esc(c), {None: alone}))
        methods = list(dict.fromkeys(e["method"] for e in es if e["group"] == "cap" and e["method"] != "none"))
        for m in methods:
            for c in CACHE_ORDER:
                got = {e["budget"]: e for e in es if e["group"] == "cap" and e["method"] == m and e["cache_type"] == c}
                if got:
                    scope = " (shared)" if next(iter(got.values()))["scope"] == "shared" else ""
                    groups.append((tt.POLICY_LABELS.get(m, tt.esc(m)) + scope, tt.esc(c), got))
        for m in dict.fromkeys(e["method"] for e in es if e["group"] == "reference"):
            got = {e["budget"]: e for e in es if e["group"] == "reference" and e["method"] == m}
            label = tt.POLICY_LABELS.get(m, tt.esc(m))
            if m == "elastickv":
                label += " " + tt.esc(next(iter(got.values()))["elastickv"]["preset"])
            else:
                label += " (per head)"
            groups.append((label + ", fa off", "f16", got))
        for label, cache, got in groups:
            head = f"{tt.esc(panel_label(p))} ({ref:.1f} MiB)" if first else ""
            first = False
            rows.append([head, label, cache, cell(got.get(None), ref, front)]
                        + [cell(got.get(f), ref, front) for f in fractions])
        if p["pending"]:
            note = f"\\emph{{{len(p['pending'])} of {p['runs']} runs pending}}"
            rows.append(["", note, "", ""] + [""] * len(fractions))
    header = ["panel (f16 KV)", "method", "cache", "no eviction"] + [f"{100 * f:g}\\,\\% kept" for f in fractions]
    table = tt.tabular("lllr" + "r" * len(fractions), header, rows, rules)

    parts, lines = [], []
    for s in summary(agg):
        p = s["panel"]
        key = tt.macro_name(f"TNineteen{p['model']}C{p['ctx']}N{p['chunks']}")
        q4 = s["q4_0"]
        bits = []
        if q4:
            nums[key + "QfourKld"] = f"{q4['kld']['value']:.4f}"
            nums[key + "QfourSaving"] = f"{saving(q4, s['f16_mib']):.2f}$\\times$"
            nums[key + "QfourMib"] = f"{q4['kv_real_mib']:.2f}"
            bits.append(f"q4\\_0 alone: KLD {nums[key + 'QfourKld']} at {nums[key + 'QfourSaving']} less KV memory")
            lines.append(f"{panel_label(p)}: q4_0 alone KLD {q4['kld']['value']:.4f} at "
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
            nums[key + f"Best{word}Kld"] = f"{b['kld']['value']:.4f}"
            nums[key + f"Best{word}Saving"] = f"{saving(b, s['f16_mib']):.2f}$\\times$"
            nums[key + f"Best{word}Mib"] = f"{b['kv_real_mib']:.2f}"
            nums[key + f"Best{word}TopOne"] = f"{b['same_top_p_pct']['value']:.1f}"
            bits.append(f"best at $\\ge${lv}$\\times$: {nums[key + f'Best{word}']} "
                        f"(KLD {nums[key + f'Best{word}Kld']}, {nums[key + f'Best{word}Saving']})")
            lines.append(f"{panel_label(p)}: best at >= {lv}x: {b['row']} KLD {b['kld']['value']:.4f} "
                         f"top-1 {b['same_top_p_pct']['value']:.1f}% at {saving(b, s['f16_mib']):.2f}x "
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
