#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 21 (LaTeX): the kv-cache-compression notebook's protocol re-run in llama.cpp. Per panel (document type,
context) and row (a policy setting: H2O heavy/recent split, semantic K, ...): the KL divergence against the f16
cache at each budget in cells, and at the panel's smallest budget the PPL change, how many times less KV memory
than the f16 cache the run really allocated (kv_real_mib of its record: llama.cpp's log), the hook's own time
per eviction pass and that time against the run's forward passes; the llama-bench decode overhead of the bench
rows beside them.

Macros: \\NumTTwentyOneSentence (settings, tokens evicted, what is pending) and, per narrative row at the
smallest budget, \\NumTTwentyOne<row>{Kld,Dppl,Saving,Ms,Overhead,Decode}.

Reads results/notebook_protocol.json (scripts/eval/notebook_protocol.py)
-> paper/generated/tab21_notebook_protocol.tex and numbers-tab21_notebook_protocol.tex."""

from __future__ import annotations

import argparse
import sys

import pandas as pd
import textable as tt

RESULT = "notebook_protocol.json"


def frame(agg: dict) -> pd.DataFrame:
    """The entries as a DataFrame, one row per run, with the value columns the table reads."""
    df = pd.DataFrame(agg["data"]["entries"])
    df["kld_value"] = df["kld"].str["value"].clip(lower=0.0)
    df["dppl"] = 100 * (df["ppl"].str["value"] / df["ppl_base"].str["value"] - 1)
    return df


def main() -> None:
    agg = tt.load(RESULT)
    data = agg["data"]
    if not data["entries"]:
        raise tt.MissingResult(f"results/{RESULT} holds no finished run yet; run scripts/eval/notebook_protocol.py")
    df = frame(agg)
    budgets = sorted(df["budget"].unique())
    # KLD per (panel, row) and budget, rows in the order they ran
    kld = df.pivot_table(index=["document", "ctx", "row"], columns="budget", values="kld_value", sort=False)
    bench = data["bench"]
    rows, rules, nums = [], set(), {}
    for (doc, ctx), panel in df.groupby(["document", "ctx"], sort=False):
        base = data["baselines"][f"{doc}-c{ctx}"]
        low = panel["budget"].min()
        if rows:
            rules.add(len(rows))
        for i, e in enumerate(panel[panel["budget"] == low].to_dict("records")):
            row = e["row"]
            dec = bench["overhead"].get(row) if bench and doc == "narrative" and ctx == bench["depth"] else None
            head = f"{doc} c{ctx} (PPL {base['ppl']['value']:.2f})" if i == 0 else ""
            ms = "--" if pd.isna(e["pass_ms_mean"]) else f"{e['pass_ms_mean']:.2f}"
            over = "--" if pd.isna(e["evict_overhead_pct"]) else f"{e['evict_overhead_pct']:.2f}"
            kl = kld.loc[(doc, ctx, row)]
            rows.append([tt.esc(head), tt.esc(row)] + ["--" if pd.isna(kl.get(b)) else f"{kl[b]:.4f}" for b in budgets]
                        + [f"{low}", f"{e['dppl']:+.1f}", f"{base['kv_real_mib'] / e['kv_real_mib']:.2f}$\\times$",
                           ms, over, "--" if dec is None else f"{dec['overhead_pct_mean']:+.1f}"])
            if doc == "narrative" and ctx == 2048:
                key = tt.macro_name(f"TTwentyOne{row}")
                nums[key + "Kld"] = f"{e['kld_value']:.4f}"
                nums[key + "Dppl"] = f"{e['dppl']:+.1f}\\,\\%"
                nums[key + "Saving"] = f"{base['kv_real_mib'] / e['kv_real_mib']:.2f}$\\times$"
                nums[key + "Ms"] = ms
                nums[key + "Overhead"] = over + "\\,\\%"
                if dec is not None:
                    nums[key + "Decode"] = f"{dec['overhead_pct_mean']:+.1f}\\,\\%"
    header = (["panel (f16 PPL)", "row"] + [f"KLD @{b}" for b in budgets]
              + ["at $B$", "$\\Delta$PPL \\%", "KV saving", "ms/pass", "pass/fwd \\%", "decode \\%"])
    table = tt.tabular("ll" + "r" * (len(budgets) + 6), header, rows, rules)
    cfg = agg["config"]
    ev = [min(e["evicted_tokens_per_chunk"]) for e in data["entries"]]
    nums["TTwentyOneModel"] = tt.esc(cfg["model"])
    nums["TTwentyOneMinEvicted"] = f"{min(ev):.0f}"
    nums["TTwentyOneRuns"] = str(len(data["entries"]))
    pending = len(data["pending"])
    dec = (f" The decode column is llama-bench's time per generated token at depth {bench['depth']} ({bench['n_gen']} "
           f"tokens, budget {bench['budget']} cells, {bench['rounds']} interleaved rounds) against the hook off."
           if bench else "")
    nums["TTwentyOneSentence"] = (
        f"All {len(data['entries'])} runs use {tt.esc(cfg['model'])}, -b = -ub = EVICT\\_EVERY = {cfg['evict_every']}, "
        f"WARM {cfg['warm']}, sink {cfg['sink']} (StreamingLLM 4), flash attention {cfg['flash_attn']}, "
        f"{tt.esc(agg['device']['cpu'])}; every run evicted: at least {min(ev):.0f} tokens per chunk at the chunk's "
        "last pass (logical length less kept cells). The KV saving is the f16 base's real KV bytes over the run's "
        "(llama.cpp's log): rows whose evictions free their cells run under the smallest physical cap, the others "
        "keep the dense buffer (1.00$\\times$). ms/pass is the hook's own time per eviction pass, pass/fwd its sum "
        "over the run's forward time." + dec
        + (f" {pending} runs of the configured grid were still pending." if pending else ""))
    tt.write("tab21_notebook_protocol", table, nums, "scripts/plot/tab21_notebook_protocol.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
