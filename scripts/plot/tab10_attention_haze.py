#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 10 (LaTeX): proxy-attention entropy, selectivity and output error on the models' real K/V, ElasticKV
against random zeroing of as many entries, at a few threshold scales (dense, the sweet preset, 0.5, 1.0).

A SIMULATION (the dumps hold no queries): the proxy queries are each model's own dense keys of the last
n_queries positions, attending with softmax(q.k / sqrt(d)) to the keys of strictly earlier positions.
Columns: K/V sparsity over positions >= SINK; H = attention entropy (nats); Delta H = H - H(dense), paired per
unit; H/ln n = entropy normalised by the log of the visible keys; top-k = attention mass on the k most
attended keys; out. err. = ||O - O_dense||_F / ||O_dense||_F. Mean +- standard error over layers x KV heads.

Reads results/attention_entropy_results.json (scripts/analysis/simulate_attention_haze.py)
-> paper/generated/tab10_attention_haze.tex and numbers-tab10_attention_haze.tex (\\NumTTenSentence, ...)."""

import argparse
import sys

import pandas as pd
import textable as tt
from elastickv import frame

RESULT = "attention_entropy_results.json"
SWEEP_SHOWN = (0.5, 1.0)  # swept scale points shown beside dense and the presets (if present in the result)
METHODS = (("elastickv", "ElasticKV"), ("random", "random"))
NCOLS = 8


def model_row(model: str, ncols: int) -> list[str]:
    """A row naming the model above its group of rows (keeps the table narrow)."""
    return [f"\\multicolumn{{{ncols}}}{{l}}{{\\textit{{{tt.esc(model)}}}}}"]


def pm(m: dict, digits: int = 3, sign: bool = False) -> str:
    """mean +- se of a {"mean", "se"} cell."""
    if not m or m.get("mean") is None:
        return "--"
    se = m.get("se")
    return tt.num(m["mean"], digits, sign) + ("" if se is None else f" $\\pm$ {se:.{digits}f}")


def signed(x: float, digits: int = 3) -> str:
    return f"{x:+.{digits}f}"


def direction(x: float) -> str:
    return "raises" if x > 0 else ("lowers" if x < 0 else "leaves unchanged")


def shown_points(d: dict, presets: set[str]) -> pd.DataFrame:
    """The model's points in the table: dense, the presets, then the swept scales of SWEEP_SHOWN (by scale)."""
    pts = frame.entries(d["points"])
    pre = pts["label"].isin(presets)
    dense = pts[~pre & (pts["scale_k"] == 0) & (pts["scale_v"] == 0)].head(1)
    sweep = pts[~pre & pts["scale_k"].isin(SWEEP_SHOWN) & (pts["scale_v"] == pts["scale_k"])]
    return pd.concat([dense, pts[pre], sweep.sort_values("scale_k", kind="stable")])


def paired(d: dict) -> pd.DataFrame:
    """The model's points other than dense, one row each: label, scale_k, and the mean entropy change and output
    error of ElasticKV (dh, err) and of random zeroing (rand_dh, rand_err) at that point."""
    e, r = "elastickv", "random"
    return pd.DataFrame([{"label": p["label"], "scale_k": p["scale_k"],
                          "dh": p[e]["entropy_delta"]["mean"], "rand_dh": p[r]["entropy_delta"]["mean"],
                          "err": p[e]["out_rel_err"]["mean"], "rand_err": p[r]["out_rel_err"]["mean"]}
                         for p in d["points"] if not (p["scale_k"] == 0 and p["scale_v"] == 0)])


def main() -> None:
    agg = tt.load(RESULT)
    cfg = agg["config"]
    presets = set(cfg.get("presets") or {})
    topk, nq, sink = cfg["topk"], cfg["n_queries"], cfg["sink"]
    models = agg["data"]["models"]

    rows, rules, nums = [], set(), {}
    for mi, (model, d) in enumerate(models.items()):
        if mi:
            rules.add(len(rows))
        rows.append(model_row(model, NCOLS))
        for _, p in shown_points(d, presets).iterrows():
            is_dense = p["scale_k"] == 0 and p["scale_v"] == 0
            point = "dense" if is_dense else (
                f"{tt.esc(p['label'])} {p['scale_k']:.2f}/{p['scale_v']:.2f}" if p["label"] in presets
                else f"{p['scale_k']:.2f}/{p['scale_v']:.2f}")
            for meth, meth_name in (METHODS[:1] if is_dense else METHODS):
                c = p[meth]
                rows.append([point, "--" if is_dense else meth_name,
                             f"{100 * c['sparsity_k_region']['mean']:.1f}/{100 * c['sparsity_v_region']['mean']:.1f}",
                             pm(c["entropy"]), pm(c["entropy_delta"], sign=True), tt.num(c["entropy_norm"]["mean"], 3),
                             pm(c["topk_mass"]), pm(c["out_rel_err"])])
                point = ""
    header = ["$s_K/s_V$", "method", "sp.\\ K/V (\\%)", "$H$ (nats)", "$\\Delta H$", "$H/\\ln n$",
              f"top-{topk} mass", "out.\\ err."]
    table = tt.tabular("ll" + "r" * (NCOLS - 2), header, rows, rules)

    # inline numbers and the sentence, all from the result
    dh_parts, top_parts, rnd_parts, scale_parts, worse_parts = [], [], [], [], []
    all_pos, ekv_err_lower_everywhere, top_scale, more_at_top = True, True, None, True
    dirs = set()
    for model, d in models.items():
        k = tt.macro_name(f"TTen{model}")
        m = tt.esc(model)
        nz = paired(d)
        all_pos &= (nz["dh"] > 0).all()
        ekv_err_lower_everywhere &= (nz["err"] < nz["rand_err"]).all()
        sweep = nz[~nz["label"].isin(presets)].sort_values("scale_k", kind="stable")
        sweet = next((p for p in d["points"] if p["label"] == "sweet"), None)
        if sweet:
            e, r = sweet["elastickv"], sweet["random"]
            nums[k + "SweetDH"] = signed(e["entropy_delta"]["mean"])
            nums[k + "SweetRandDH"] = signed(r["entropy_delta"]["mean"])
            nums[k + "SweetTop"] = tt.num(e["topk_mass"]["mean"], 3)
            nums[k + "DenseTop"] = tt.num(d["dense"]["topk_mass"]["mean"], 3)
            nums[k + "SweetErr"] = tt.num(e["out_rel_err"]["mean"], 3)
            nums[k + "SweetRandErr"] = tt.num(r["out_rel_err"]["mean"], 3)
            nums[k + "SweetSpK"] = f"{100 * e['sparsity_k_region']['mean']:.1f}\\%"
            dirs.add(direction(e["entropy_delta"]["mean"]))
            dh_parts.append(f"{nums[k + 'SweetDH']} nats on {m}")
            dt = e["topk_mass"]["mean"] - d["dense"]["topk_mass"]["mean"]
            top_parts.append(f"{'falls' if dt < 0 else 'rises' if dt > 0 else 'stays'} from {nums[k + 'DenseTop']} "
                             f"to {nums[k + 'SweetTop']} on {m}")
            rel = "smaller" if abs(e["entropy_delta"]["mean"]) < abs(r["entropy_delta"]["mean"]) else "larger"
            err = "lower" if e["out_rel_err"]["mean"] < r["out_rel_err"]["mean"] else "higher"
            rnd_parts.append(f"on {m} its mean entropy change is {rel} ({nums[k + 'SweetDH']} against "
                             f"{nums[k + 'SweetRandDH']} nats) and its output error {err} ({nums[k + 'SweetErr']} "
                             f"against {nums[k + 'SweetRandErr']})")
        if len(sweep):
            top = sweep.iloc[-1]
            top_scale = f"{top['scale_k']:.2f}"
            nums[k + "TopScale"] = top_scale
            nums[k + "TopScaleDH"] = signed(top["dh"])
            scale_parts.append(f"{nums[k + 'TopScaleDH']} nats on {m}")
            if sweet:
                more_at_top &= top["dh"] > sweet["elastickv"]["entropy_delta"]["mean"]
        worse = sweep[sweep["dh"] > sweep["rand_dh"]]
        if len(worse):
            sc = [f"{x:.2f}" for x in worse["scale_k"]]
            nums[k + "EkvAboveRandFrom"] = sc[0]
            worse_parts.append(f"on {m} at scale{'s' if len(sc) > 1 else ''} "
                               f"{', '.join(sc[:-1]) + ' and ' + sc[-1] if len(sc) > 1 else sc[0]}")

    s = (f"Table~\\ref{{tab:haze}} is a simulation: the dumps hold the models' own keys and values but no queries, "
         f"so the proxy queries are each model's dense (never sparsified) keys of the last {nq} positions, each "
         f"attending with $\\mathrm{{softmax}}(q\\cdot k/\\sqrt{{d}})$ to the keys of strictly earlier positions; keys "
         f"and queries come from different projections, so the entropy levels are illustrative and the comparison "
         f"with random zeroing of as many entries (per layer, head and tensor, positions $\\ge {sink}$; seeds "
         f"{', '.join(map(str, cfg['seeds']))}) is what the table shows. sp.\\ K/V is the zero fraction of K and V over positions $\\ge {sink}$, $H$ the "
         f"attention entropy in nats, "
         f"$\\Delta H$ its change from the dense cache (paired per layer and head), $H/\\ln n$ the entropy over the "
         f"log of the number of visible keys, top-{topk} mass the attention on the {topk} most attended keys and "
         f"out.\\ err.\\ $\\lVert O-O_{{\\mathrm{{dense}}}}\\rVert_F/\\lVert O_{{\\mathrm{{dense}}}}\\rVert_F$; each value is "
         f"the mean $\\pm$ standard error over layers $\\times$ KV heads (not independent samples: a spread "
         f"indicator, not a confidence interval). ")
    if dh_parts:
        lead = ("ElasticKV does not lower the proxy attention entropy: at the sweet preset it raises it"
                if all_pos else "At the sweet preset ElasticKV " + "/".join(sorted(dirs)) + " the proxy attention entropy")
        s += f"{lead} by {' and '.join(dh_parts)}"
        if all_pos and scale_parts:
            s += f", {'and more' if more_at_top else 'and'} at scale {top_scale} ({' and '.join(scale_parts)})"
        s += f", while the top-{topk} mass {' and '.join(top_parts)}"
        s += ": in this simulation zeroing the small entries does not remove haze. " if all_pos else ". "
        s += f"Against random zeroing at the sweet preset, {'; '.join(rnd_parts)}"
        s += "; ElasticKV's output error is the lower one at every scale point" if ekv_err_lower_everywhere else ""
        s += (f", but its entropy increase is not the smaller one everywhere: it exceeds random's "
              f"{' and '.join(worse_parts)}." if worse_parts else ".")
    nums["TTenSentence"] = s
    tt.write("tab10_attention_haze", table, nums, "scripts/plot/tab10_attention_haze.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
