#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 22 (LaTeX): the kv-cache-compression notebook's headline claims beside what this project measures for
the same configuration (narrative panel of Table 21: WikiText-2 test, 2,048-token context, budgets in cells), and
what explains the difference.

The notebook's figures are quoted from its README (github.com/suhasramanand/kv-cache-compression at f74221a,
TinyLlama-1.1B, HF transformers); the explanations are those of the code reading in
../shared/notes/kv-cache-compression-policies.md. Everything in the "measured here" column comes from
results/notebook_protocol.json (scripts/eval/notebook_protocol.py), with the learned policy's network from
results/learned/train_learned.json; nothing in it is typed.

-> paper/generated/tab22_notebook_claims.tex and numbers-tab22_notebook_claims.tex."""

from __future__ import annotations

import argparse
import sys

import pandas as pd
import textable as tt
from elastickv import frame

RESULT = "notebook_protocol.json"
PANEL = ("narrative", 2048)
#: the notebook README's perplexities at 2,048 tokens (TinyLlama-1.1B): quoted, not measured here
NB_FULL = 17.12
NB_PPL = {"h2o": 19.23, "lru": 18.96, "semantic": 29.28, "window": 44.38}


def nb(key: str) -> str:
    """A quoted notebook PPL with its change against the notebook's own full cache."""
    return f"PPL {NB_PPL[key]:.2f} ({100 * (NB_PPL[key] / NB_FULL - 1):+.1f}\\,\\%)"


def dppl(e: pd.Series) -> str:
    return f"{100 * (e['ppl'] / e['ppl_base'] - 1):+.1f}\\,\\%"


def measured(e: pd.Series | None, base: dict) -> str:
    if e is None:
        return "not run"
    return (f"PPL {e['ppl']:.2f} ({dppl(e)}), KLD {max(e['kld'], 0.0):.4f}, "
            f"real KV saving {base['kv_real_mib'] / e['kv_real_mib']:.2f}$\\times$")


def main() -> None:
    agg = tt.load(RESULT)
    data = agg["data"]
    df = frame.entries(agg)
    es = df[(df["document"] == PANEL[0]) & (df["ctx"] == PANEL[1])]
    if es.empty:
        raise tt.MissingResult(f"results/{RESULT} has no narrative c2048 run yet; run scripts/eval/notebook_protocol.py")
    base = data["baselines"][f"{PANEL[0]}-c{PANEL[1]}"]

    def at(row: str, budget: int = 256) -> pd.Series | None:
        """The panel's first run of ``row`` at ``budget``, or None."""
        hit = es[(es["row"] == row) & (es["budget"] == budget)]
        return None if hit.empty else hit.iloc[0]

    def over(row: str) -> str:
        e = at(row)
        if e is None or pd.isna(e["evict_overhead_pct"]):
            return "--"
        dec = (data["bench"] or {}).get("overhead", {}).get(row)
        d = f", decode {dec['overhead_pct_mean']:+.1f}\\,\\%" if dec else ""
        return f"{e['evict_overhead_pct']:.2f}\\,\\% ({e['pass_ms_mean']:.2f} ms/pass){d}"

    b512 = es[es["budget"] == 512]
    zero = (b512["kld"] <= 0).sum()
    lo512 = b512.loc[b512["kld"].idxmin()] if len(b512) else None
    h2o, learned = at("h2o-80-20"), at("learned")
    freed = es[es["kv_cells_cap"].notna()]  # rows whose evictions free cells (run under a physical cap)
    best_saving = freed.loc[(base["kv_real_mib"] / freed["kv_real_mib"]).idxmax()] if len(freed) else None
    rows = [
        ["Full cache at 2,048 tokens", f"PPL {NB_FULL:.2f} (TinyLlama-1.1B)",
         f"PPL {base['ppl']['value']:.2f} ({tt.esc(agg['config']['model'])}, f16 cache)",
         "another model and scoring (llama-perplexity scores the second half of each window); levels are not comparable, differences are"],
        ["H2O-256, heavy/recent 80/20", nb("h2o") + ", 8$\\times$, ``87.5\\,\\% memory savings''", measured(h2o, base),
         "the notebook's H2O ran with all-zero scores (attention never collected), so top-k ties chose the tokens; its memory figure is the budget, not bytes: a per-head keep set frees no cell here"],
        ["LRU-256", nb("lru"), measured(at("lru"), base) + "; FIFO reading: " + measured(at("lru_fifo"), base),
         "the notebook's LRU never records a use: it is FIFO; here a use is an attention weight above 1/n\\_visible"],
        ["SemanticCluster-256, K = 32", nb("semantic"), measured(at("semantic-k32"), base)
         + "; head-averaged keys: " + measured(at("semantic-mean-k32"), base),
         "its archive has 38.76 for K32; one centroid-nearest cell per cluster, then the most recent cells, as the notebook"],
        ["SlidingWindow-256", nb("window"), measured(at("sliding_window"), base)
         + "; with 4 sinks (StreamingLLM): " + measured(at("streaming"), base),
         "no sinks: the first tokens' attention mass has nowhere to go (the attention-sink effect)"],
        ["Eviction overhead, B = 256", "H2O 10.33\\,\\%, LRU 6.20\\,\\%, semantic 97.84\\,\\%, window 0.31\\,\\%",
         f"H2O {over('h2o-80-20')}; LRU {over('lru')}; semantic {over('semantic-k32')}; window {over('sliding_window')}",
         "the notebook times Python eviction calls against one HF forward pass; here the hook's own C++ time per pass against llama.cpp's forward time, and llama-bench decode interleaved with the hook off"],
        ["Memory", "0.8 GB for every method",
         (f"dense rows 1.00$\\times$; rows that free cells down to {best_saving['kv_real_mib']:.2f} MiB of "
          f"{base['kv_real_mib']:.2f} ({tt.esc(best_saving['row'])}, B = {best_saving['budget']})"
          if best_saving is not None else "--"),
         "the notebook measured after building the full K/V of a 614-token text, before any eviction; here llama.cpp's own KV size line of each run"],
        ["4$\\times$ (B = 512) with no degradation", "no loss at B $\\ge$ 512",
         (f"{len(b512) - zero} of {len(b512)} rows lose quality at B = 512 (lowest KLD "
          f"{lo512['kld']:.4f}, {tt.esc(lo512['row'])})" if lo512 is not None else "not run"),
         "on its short texts (WikiText-2 lines of 500 characters or more) budgets of 512 cells and more never evicted; here every run evicts (Table~\\ref{tab:notebook})"],
        ["Learned eviction replaces H2O", "claimed, never applied", measured(learned, base),
         "the notebook's evaluation skipped every window that needed an eviction (a dtype error); here the MLP runs in the hook, trained on H2O's choices over validation text"],
    ]
    header = ["claim", "notebook", "measured here (WikiText-2 test, c 2048)", "why they differ"]
    table = tt.tabular("p{2.6cm}p{2.8cm}p{5.4cm}p{5.4cm}", header, rows)
    nums = {"TTwentyTwoClaims": str(len(rows))}
    trained = tt.load("learned/train_learned.json")["data"]
    nums["TTwentyTwoLearnedAuc"] = f"{trained['holdout_auc']:.3f}"
    nums["TTwentyTwoLearnedSamples"] = f"{trained['samples']:,}"

    if h2o is not None and learned is not None:
        nums["TTwentyTwoLearnedKld"] = f"{learned['kld']:.4f}"
        nums["TTwentyTwoHTwoOKld"] = f"{h2o['kld']:.4f}"
    tt.write("tab22_notebook_claims", table, nums, "scripts/plot/tab22_notebook_claims.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
