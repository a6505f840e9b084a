#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 13: selectivity metrics of the models' real K and V, before and after ElasticKV (sweet preset).

Input: the kvdump dump of each model (one llama-perplexity pass over 2048 tokens of WikiText-2 test, f16
cache): "before" = the model's own K/V, never thresholded; "after" = the hook's own output of that pass
(sweet preset), which the script checks against the numpy reference of the op entry by entry. As a control,
"random" zeroes exactly as many entries per (layer, KV head, tensor) as the hook did, uniformly among the
non-zero entries of positions >= SINK (one seed): it separates what any zeroing does to these metrics from
what zeroing the SMALL entries does.

A row is one cached token of one KV head (head_dim values x_1..x_d); only rows with position >= SINK (the
thresholded region) are measured. Per row:
  spr           peak-to-mean ratio max_i|x_i| / mean_i|x_i| (zeros count in the mean): 1 = flat, d = one entry
  kurtosis      Pearson kurtosis m4 / m2^2 of the row's values about the row mean (Gaussian 3, not excess)
  gini          Gini coefficient of |x|: sum_ij |a_i - a_j| / (2 d^2 mean a): 0 = all equal, (d-1)/d = one entry
  top10_energy  fraction of the row's L2 energy (sum x^2) in its ceil(0.1 d) largest-|x| entries (7 of 64)
  zero_frac     fraction of the row's entries that are exactly 0
  block_nnz     non-zeros per aligned 32-value block of the row (0..32), also as a histogram
Each metric is averaged over the rows of a unit (layer, KV head), then reported as mean and standard error
over units, plus the median over all rows pooled. "delta" = after - before, paired per unit.

Examples:
  scripts/analysis/f2_spr_real_kv.py
  scripts/analysis/f2_spr_real_kv.py --set models=[smollm2-135m] --set layers=[0,1] --set output=/tmp/t13.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from elastickv import startup

startup.single_threaded_blas()  # before numpy
import numpy as np  # noqa: E402

from elastickv import config, kvanalysis as ka, paths, results  # noqa: E402
from elastickv.progress import bar as progress_bar  # noqa: E402

SCRIPT = "scripts/analysis/f2_spr_real_kv.py"
DEFAULTS = {
    "artifact": "Table 13",
    "models": ["smollm2-135m", "qwen2.5-coder-0.5b"],
    "ctx": 2048,
    "layers": None,
    "sink": 64,
    "scale_k": 0.45,         # the preset the dump's "after" arrays must have been made with
    "scale_v": 0.50,
    "top_fraction": 0.10,
    "block": 32,
    "random_seed": 0,
    "output": "results/f2_spr_real_kv_results.json",
}
METRICS = ("spr", "kurtosis", "gini", "top10_energy", "zero_frac", "block_nnz")
STATES = ("before", "after", "random")


def row_metrics(rows: np.ndarray, top_fraction: float, block: int) -> dict:
    """Per-row metric arrays of rows [m, d]."""
    return {"spr": ka.peak_to_mean(rows), "kurtosis": ka.kurtosis(rows), "gini": ka.gini(rows),
            "top10_energy": ka.top_energy_fraction(rows, top_fraction), "zero_frac": (rows == 0).mean(axis=1),
            "block_nnz": ka.block_survivors(rows, block).mean(axis=1)}


def analyse_model(cfg: dict, model: str, dumps: Path | None = None) -> tuple[dict, Path]:
    dp, source = ka.open_dump(model, cfg["ctx"], dumps)
    man = dp.manifest
    for key in ("scale_k", "scale_v"):
        if abs(man[key] - cfg[key]) > 1e-6:
            raise ka.AnalysisError(f"{model}: the dump's after arrays used {key} {man[key]}, the config says {cfg[key]}")
    if man["sink"] != cfg["sink"]:
        raise ka.AnalysisError(f"{model}: the dump used sink {man['sink']}, the config says {cfg['sink']}")
    layers = ka.select_layers(dp.layers, cfg["layers"])
    unit = {t: {s: {m: [] for m in METRICS} for s in STATES} for t in ("k", "v")}
    pooled = {t: {s: {m: [] for m in METRICS} for s in STATES} for t in ("k", "v")}
    hist = {t: {s: np.zeros(cfg["block"] + 1) for s in STATES} for t in ("k", "v")}
    mismatch = {"k": 0, "v": 0}
    with progress_bar(len(layers), f"{model} layers") as bar:
        for layer in ka.load_layers(dp, layers, after=True):
            reg = ka.region(layer.pos, cfg["sink"])
            for t, x, after, scale in (("k", layer.k, layer.k_after, cfg["scale_k"]),
                                       ("v", layer.v, layer.v_after, cfg["scale_v"])):
                ref = ka.zero(x, ka.ekv_mask(x, reg, scale))
                mismatch[t] += int(np.sum(ref != after))
                counts = (after[reg] == 0).sum(axis=(0, 2)) - (x[reg] == 0).sum(axis=(0, 2))
                rng = np.random.default_rng([cfg["random_seed"], layer.layer, 0 if t == "k" else 1])
                rand = ka.zero(x, ka.matched_random_mask(x, reg, counts, rng))
                for s, arr in (("before", x), ("after", after), ("random", rand)):
                    for h in range(x.shape[1]):
                        rows = arr[reg, h, :]
                        rm = row_metrics(rows, cfg["top_fraction"], cfg["block"])
                        for m in METRICS:
                            unit[t][s][m].append(float(np.nanmean(rm[m])))
                            pooled[t][s][m].append(rm[m])
                        hist[t][s] += np.bincount(ka.block_survivors(rows, cfg["block"]).ravel(),
                                                  minlength=cfg["block"] + 1)
            bar.update()
    out = {"layers": layers, "n_units": len(unit["k"]["before"]["spr"]),
           "hook_vs_reference_mismatches": mismatch, "tensors": {}}
    for t in ("k", "v"):
        te = {}
        for s in STATES:
            te[s] = {m: {**ka.mean_se(unit[t][s][m]), "median_rows": float(np.nanmedian(np.concatenate(pooled[t][s][m])))}
                     for m in METRICS}
            te[s]["block_nnz_hist"] = hist[t][s] / hist[t][s].sum()
        for s in ("after", "random"):
            te[f"delta_{s}"] = {m: ka.mean_se(np.asarray(unit[t][s][m]) - np.asarray(unit[t]["before"][m]))
                                for m in METRICS}
        out["tensors"][t] = te
    return out, source


NOTES = ("Real K/V of one llama-perplexity pass over {ctx} tokens of WikiText-2 test (f16 cache, flash attention on). "
         "before = the model's own K/V; after = the hook's output of that pass (sweet: scale_k {sk}, scale_v {sv}, "
         "sink {sink}), checked entry by entry against the numpy reference (hook_vs_reference_mismatches); random = "
         "as many zeros per layer/KV head/tensor as the hook made, uniform among the non-zero entries of positions "
         ">= {sink} (seed {seed}): a control for what any zeroing does to these metrics. A row = one token of one KV "
         "head (head_dim values), positions >= {sink} only. spr = peak-to-mean ratio max|x|/mean|x| per row (zeros "
         "count in the mean; 1 flat, d one entry); kurtosis = Pearson m4/m2^2 about the row mean (Gaussian 3); "
         "gini = Gini coefficient of |x| per row (0 equal, (d-1)/d one entry); top10_energy = share of the row's "
         "L2 energy in its ceil({tf}*d) largest-|x| entries; zero_frac = exact zeros per row; block_nnz = "
         "non-zeros per aligned {block}-value block (block_nnz_hist: share of blocks with 0..{block} survivors). "
         "Values: mean over a unit's rows, then mean and standard error over layers x KV heads; median_rows = "
         "median over all rows pooled; delta_* = state - before, paired per unit. Zeroing raises spr, kurtosis, "
         "gini and top10_energy mechanically (random zeroing does too): these describe the stored vectors, not "
         "the model's attention.")


def run(cfg: dict, force: bool = False, dumps: Path | None = None) -> dict:
    """Computes the table for every model of the config and writes the aggregate; returns it."""
    ka.check_common(cfg)
    if not 0 < cfg["top_fraction"] <= 1 or cfg["block"] < 1:
        raise config.ConfigError("top_fraction must be in (0, 1] and block >= 1")
    data, sources, timing = {"models": {}}, [], {}
    for model in cfg["models"]:
        t0 = time.time()
        data["models"][model], src = analyse_model(cfg, model, dumps)
        timing[model] = round(time.time() - t0, 1)
        sources.append(src)
    data["seconds"] = timing
    notes = NOTES.format(ctx=cfg["ctx"], sk=cfg["scale_k"], sv=cfg["scale_v"], sink=cfg["sink"],
                         seed=cfg["random_seed"], tf=cfg["top_fraction"], block=cfg["block"])
    agg = results.aggregate(cfg["artifact"], SCRIPT, cfg, ka.jsonable(data), sources, notes)
    results.write_aggregate(paths.ROOT / cfg["output"], agg, force=force)
    return agg


def markdown(agg: dict) -> str:
    lines = ["| model | tensor | state | SPR | kurtosis | Gini | top-10% energy | zeros | survivors/32 |",
             "|" + "---|" * 9]
    for model, d in agg["data"]["models"].items():
        for t, te in d["tensors"].items():
            for s in STATES:
                m = te[s]
                lines.append(f"| {model} | {t.upper()} | {s} | {m['spr']['mean']:.2f} | {m['kurtosis']['mean']:.2f} | "
                             f"{m['gini']['mean']:.3f} | {m['top10_energy']['mean']:.3f} | "
                             f"{100 * m['zero_frac']['mean']:.1f}% | {m['block_nnz']['mean']:.1f} |")
        lines.append(f"| {model} | hook vs reference mismatches: K {d['hook_vs_reference_mismatches']['k']}, "
                     f"V {d['hook_vs_reference_mismatches']['v']} |||||||")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return startup.analysis_main(__file__, __doc__, "table13_selectivity", DEFAULTS, run, markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
