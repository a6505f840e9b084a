#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Supplementary table (LaTeX): (a) tau-band shares of the models' real K and V and (b) token eviction (H2O,
ScissorHands, StreamingLLM) replayed at ElasticKV's memory budget, against ElasticKV (sweet preset).

(a) tau = scale * mean|x| over positions >= SINK per layer / KV head / tensor; each entry of those positions falls
in a band of |x| / tau; per band the share of the entries, of the L1 energy (sum |x|) and of the L2 energy
(sum x^2), pooled over the units of a model; "< 1" = the bands ElasticKV zeroes.
(b) every method stores the same number of values (budget B = round(f * tokens), f = ElasticKV's kept fraction);
K / V energy removed = pooled fraction of the L2 energy of positions >= SINK zeroed or evicted; out. err. =
||O - O_dense||_F / ||O_dense||_F of proxy attention outputs (queries = the dense keys of the last positions; a
simulation), mean +- standard error over layers x KV heads, and its geometric-mean ratio to ElasticKV.

Reads results/supplementary/tau_band_energy.json (scripts/analysis/tau_band_energy.py) and
results/supplementary/eviction_replay.json (scripts/analysis/eviction_replay.py)
-> paper/generated/tab15_supplementary.tex and numbers-tab15_supplementary.tex (\\NumTFifteenSentence, ...)."""

import argparse
import sys

import pandas as pd
import textable as tt

BANDS = "supplementary/tau_band_energy.json"
EVICTION = "supplementary/eviction_replay.json"
SHARES = (("entries", "entries"), ("l1", "L1"), ("l2", "L2"))
METHOD_NAMES = {"elastickv": "ElasticKV", "h2o": "H2O", "scissorhands": "ScissorHands", "streamingllm": "StreamingLLM"}


def pct(x: float) -> str:
    """A share in percent: two decimals, three below 0.1 %."""
    v = 100 * x
    return f"{v:.3f}" if 0 < v < 0.1 else f"{v:.2f}"


def model_row(model: str, ncols: int) -> list[str]:
    """A row naming the model above its group of rows (keeps the table narrow)."""
    return [f"\\multicolumn{{{ncols}}}{{l}}{{\\textit{{{tt.esc(model)}}}}}"]


def band_label(lo: float, hi: float | None) -> str:
    return "$[" + f"{lo:g}," + ("\\infty" if hi is None else f"{hi:g}") + ")$"


def listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def main() -> None:
    bands = tt.load(BANDS)
    ev = tt.load(EVICTION)
    edges = bands["data"]["edges"]
    n_bands = len(bands["data"]["bands"])
    n_below = sum(1 for hi in edges[1:n_bands + 1] if hi is not None and hi <= 1.0)

    # (a) tau bands
    rows, rules, nums = [], set(), {}
    for mi, (model, md) in enumerate(bands["data"]["models"].items()):
        if mi:
            rules.add(len(rows))
        rows.append(model_row(model, n_bands + 3))
        for ti, (t, td) in enumerate(md["tensors"].items()):
            if ti:
                rules.add(len(rows))
            first_t = True
            for key, name in SHARES:
                rows.append([f"{t.upper()} ({td['scale']:g})" if first_t else "", name,
                             *[pct(x) for x in td["pooled"][key]], pct(td["zeroed"][key]["pooled"])])
                first_t = False
    header = ["$T$ ($s$)", "share (\\%)",
              *[band_label(edges[i], edges[i + 1]) for i in range(n_bands)], "$<1$ (zeroed)"]
    table = tt.tabular("ll" + "r" * (n_bands + 1), header, rows, rules)

    # (b) eviction replay
    erows, erules = [], set()
    for mi, (model, md) in enumerate(ev["data"]["models"].items()):
        if mi:
            erules.add(len(erows))
        erows.append(model_row(model, 7))
        for meth, m in md["methods"].items():
            erows.append([METHOD_NAMES.get(meth, tt.esc(meth)),
                          pct(m["kept_values"]["mean"]), f"{m['kept_tokens']['mean']:.0f}",
                          pct(m["pooled_energy_k"]), pct(m["pooled_energy_v"]),
                          f"{m['attn_out']['mean']:.3f} $\\pm$ {m['attn_out']['se']:.3f}",
                          tt.num(m["geomean_ratio_to_elastickv"]["attn_out"], 3)])
    eheader = ["method", "kept val.\\ (\\%)", "tokens kept", "K $E$ rem.\\ (\\%)", "V $E$ rem.\\ (\\%)",
               "out.\\ err.", "err.\\ / ElasticKV"]
    table += "\n\\medskip\n\n" + tt.tabular("lrrrrrr", eheader, erows, erules)

    # inline numbers and the sentence
    bcfg, ecfg = bands["config"], ev["config"]
    zero_parts = []
    for model, md in bands["data"]["models"].items():
        k = tt.macro_name(f"TFifteen{model}")
        tk, tv = md["tensors"]["k"], md["tensors"]["v"]
        for t, td in (("K", tk), ("V", tv)):
            nums[k + t + "ZeroEntries"] = pct(td["zeroed"]["entries"]["pooled"]) + "\\%"
            nums[k + t + "ZeroLtwo"] = pct(td["zeroed"]["l2"]["pooled"]) + "\\%"
        zero_parts.append(f"{nums[k + 'KZeroEntries']} of K and {nums[k + 'VZeroEntries']} of V entries but "
                          f"{nums[k + 'KZeroLtwo']} and {nums[k + 'VZeroLtwo']} of their L2 energy on {tt.esc(model)}")
    # the replay per model and method: pooled K and V energy removed and output error, each beside ElasticKV's
    rep = pd.DataFrame([{"model": model, "method": n, "k": m["pooled_energy_k"], "v": m["pooled_energy_v"],
                         "err": m["attn_out"]["mean"]} for model, md in ev["data"]["models"].items()
                        for n, m in md["methods"].items()])
    ekv = rep[rep["method"] == "elastickv"].set_index("model")
    others = rep[rep["method"] != "elastickv"].join(ekv, on="model", rsuffix="_ekv")
    min_factor = min((others["k"] / others["k_ekv"]).min(), (others["v"] / others["v_ekv"]).min())
    lower_all, higher_all = (others["err"] < others["err_ekv"]).all(), (others["err"] > others["err_ekv"]).all()
    evict_parts, err_parts = [], []
    for model, g in others.groupby("model", sort=False):
        k = tt.macro_name(f"TFifteen{model}")
        nums[k + "EvictKMin"], nums[k + "EvictKMax"] = pct(g["k"].min()) + "\\%", pct(g["k"].max()) + "\\%"
        nums[k + "EkvErr"] = f"{ekv.loc[model, 'err']:.3f}"
        nums[k + "EkvK"] = pct(ekv.loc[model, "k"]) + "\\%"
        evict_parts.append(f"{nums[k + 'EvictKMin']}--{nums[k + 'EvictKMax']} of the K energy against "
                           f"{nums[k + 'EkvK']} on {tt.esc(model)}")
        errs = []
        for n, err in zip(g["method"], g["err"]):
            nums[k + tt.macro_name(METHOD_NAMES.get(n, n)) + "Err"] = f"{err:.3f}"
            errs.append(f"{METHOD_NAMES.get(n, tt.esc(n))} {err:.3f}")
        err_parts.append(f"{listing(errs)} against ElasticKV's {nums[k + 'EkvErr']} on {tt.esc(model)}")
    more = "far more" if min_factor >= 10 else ("more" if min_factor > 1 else "not always more")
    nums["TFifteenEvictOverEkvMin"] = f"{min_factor:.0f}"
    rel = "lower" if lower_all else ("higher" if higher_all else "a mixed")
    heavy = 100 * (1 - ecfg["recent_fraction"])
    s = (f"In the upper table, $\\tau = s\\cdot\\mathrm{{mean}}|x|$ over positions $\\ge {bcfg['sink']}$ per layer, KV "
         f"head and tensor $T$ (sweet scales $s$), and each entry of those positions falls in a band of $|x|/\\tau$; a "
         f"band's shares of the entries, of $\\sum|x|$ (L1) and of $\\sum x^2$ (L2) are pooled over layers and heads, "
         f"and the {n_below} bands below 1 are what ElasticKV zeroes: {'; '.join(zero_parts)}. In the lower table "
         f"H2O, ScissorHands and StreamingLLM are replayed online on the same K/V with the budget of ElasticKV's kept "
         f"fraction (same number of stored values; all keep the {ecfg['sink']} sink tokens; H2O and ScissorHands "
         f"split the rest heavy:recent {heavy:.0f}:{100 - heavy:.0f}, StreamingLLM keeps the newest tokens); "
         f"kept val.\\ is the share of the head's K and V values still stored (the budget check), tokens kept the "
         f"mean number of cached tokens, $E$ rem.\\ the pooled share of the L2 energy of positions $\\ge {ecfg['sink']}$ zeroed or evicted, "
         f"out.\\ err.\\ the relative error of the proxy attention outputs of the last {ecfg['n_queries']} positions "
         f"(mean $\\pm$ standard error over layers $\\times$ KV heads) and err./ElasticKV its geometric-mean ratio. "
         f"Token eviction at that budget removes {more} energy ({'; '.join(evict_parts)}), yet under this proxy "
         f"{'all three give' if rel != 'a mixed' else 'the three give'} {rel} attention-output error"
         f"{'' if rel == 'a mixed' else ' than ElasticKV'} ({'; '.join(err_parts)}). "
         f"The proxy is a caveat, not a verdict: its queries are the keys themselves (each arriving position's dense "
         f"key), which likely favours nearby tokens that the recent window keeps, and H2O and ScissorHands are scored with "
         f"the same proxy attention, not with the model's queries per query head.")
    nums["TFifteenSentence"] = s
    tt.write("tab15_supplementary", table, nums, "scripts/plot/tab15_supplementary.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
