#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Supplementary: where the energy of the models' real K and V lies relative to ElasticKV's threshold tau.

For every layer, KV head and tensor of the dump (kvdump: one pass over 2048 tokens of WikiText-2 test),
tau = scale * mean|x| over positions >= SINK (sweet scales by default), and each entry of those positions
falls in a band of r = |x| / tau: [0, 0.25), [0.25, 0.5), [0.5, 1) (what ElasticKV zeroes), [1, 2), [2, 4),
[4, inf). Per band: the share of the entries, of the L1 energy (sum |x|) and of the L2 energy (sum x^2).
Reported pooled over all units of a model (sums, then shares) and as mean and standard error over
layers x heads of the per-unit shares; "zeroed" sums the bands below r = 1.

Examples:
  scripts/analysis/tau_band_energy.py
  scripts/analysis/tau_band_energy.py --set models=[smollm2-135m] --set layers=[0,1] --set output=/tmp/tb.json
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

SCRIPT = "scripts/analysis/tau_band_energy.py"
DEFAULTS = {
    "artifact": "Supplementary: tau-band energy",
    "models": ["smollm2-135m", "qwen2.5-coder-0.5b"],
    "ctx": 2048,
    "layers": None,
    "sink": 64,
    "scale_k": 0.45,
    "scale_v": 0.50,
    "edges": [0, 0.25, 0.5, 1, 2, 4, "inf"],
    "output": "results/supplementary/tau_band_energy.json",
}
KINDS = ("entries", "l1", "l2")


def parse_edges(edges: list) -> np.ndarray:
    """Band edges from the config (numbers; inf (or YAML's .inf) for the open end)."""
    try:
        e = np.array([float(x) for x in edges], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise config.ConfigError(f"edges: numbers (and .inf), got {edges!r}") from err
    if len(e) < 2 or e[0] != 0 or np.any(np.diff(e) <= 0) or 1.0 not in e:
        raise config.ConfigError(f"edges: must start at 0, increase and contain 1 (tau itself), got {edges!r}")
    return e


def band_labels(e: np.ndarray) -> list[str]:
    return [f"[{a:g}, {'inf' if np.isinf(b) else f'{b:g}'})" for a, b in zip(e[:-1], e[1:])]


def analyse_model(cfg: dict, model: str, edges: np.ndarray, dumps: Path | None = None) -> tuple[dict, Path]:
    dp, source = ka.open_dump(model, cfg["ctx"], dumps)
    layers = ka.select_layers(dp.layers, cfg["layers"])
    nb = len(edges) - 1
    below = edges[1:] <= 1.0  # bands entirely below tau: what ElasticKV zeroes
    pooled = {t: {k: np.zeros(nb) for k in KINDS} for t in ("k", "v")}
    unit = {t: {k: [] for k in KINDS} for t in ("k", "v")}
    with progress_bar(len(layers), f"{model} layers") as bar:
        for layer in ka.load_layers(dp, layers):
            reg = ka.region(layer.pos, cfg["sink"])
            for t, x, scale in (("k", layer.k, cfg["scale_k"]), ("v", layer.v, cfg["scale_v"])):
                taus = ka.tau(x, reg, scale)
                for h in range(x.shape[1]):
                    sums = ka.band_sums(x[reg, h, :], taus[h], edges)
                    fr = ka.band_fractions(sums)
                    for k in KINDS:
                        pooled[t][k] += sums[k]
                        unit[t][k].append(fr[k])
            bar.update()
    out = {"layers": layers, "n_units": len(unit["k"]["l2"]), "tensors": {}}
    for t in ("k", "v"):
        te = {"scale": cfg[f"scale_{t}"], "pooled": {}, "per_unit": {}, "zeroed": {}}
        for k in KINDS:
            frac = pooled[t][k] / pooled[t][k].sum()
            arr = np.asarray(unit[t][k])  # [units, bands]
            te["pooled"][k] = frac
            te["per_unit"][k] = [ka.mean_se(arr[:, b]) for b in range(nb)]
            te["zeroed"][k] = {"pooled": float(frac[below].sum()), "per_unit": ka.mean_se(arr[:, below].sum(axis=1))}
        out["tensors"][t] = te
    return out, source


NOTES = ("Real K/V of one llama-perplexity pass over {ctx} tokens of WikiText-2 test (f16 cache). Per layer / KV head / "
         "tensor: tau = scale * mean|x| over positions >= {sink} (scale_k {sk}, scale_v {sv}); each entry of those "
         "positions falls in a band of |x|/tau (bands: {labels}); entries = share of the entries, l1 = share of "
         "sum|x|, l2 = share of sum x^2. pooled: sums over all units of the model, then shares; per_unit: mean and "
         "standard error over layers x KV heads of each unit's shares; zeroed: the bands below |x|/tau = 1, which "
         "ElasticKV sets to 0 (its entries share is the region sparsity; its l2 share the L2 energy removed).")


def run(cfg: dict, force: bool = False, dumps: Path | None = None) -> dict:
    """Computes the bands for every model of the config and writes the aggregate; returns it."""
    ka.check_common(cfg)
    edges = parse_edges(cfg["edges"])
    cfg["edges"] = [x if np.isfinite(float(x)) else "inf" for x in cfg["edges"]]  # JSON has no infinity
    data = {"bands": band_labels(edges), "edges": [None if np.isinf(x) else float(x) for x in edges], "models": {}}
    sources, timing = [], {}
    for model in cfg["models"]:
        t0 = time.time()
        data["models"][model], src = analyse_model(cfg, model, edges, dumps)
        timing[model] = round(time.time() - t0, 1)
        sources.append(src)
    data["seconds"] = timing
    notes = NOTES.format(ctx=cfg["ctx"], sink=cfg["sink"], sk=cfg["scale_k"], sv=cfg["scale_v"],
                         labels=", ".join(data["bands"]))
    agg = results.aggregate(cfg["artifact"], SCRIPT, cfg, ka.jsonable(data), sources, notes)
    results.write_aggregate(paths.ROOT / cfg["output"], agg, force=force)
    return agg


def markdown(agg: dict) -> str:
    bands = agg["data"]["bands"]
    lines = ["| model | tensor | share | " + " | ".join(bands) + " | zeroed |", "|" + "---|" * (len(bands) + 4)]
    for model, d in agg["data"]["models"].items():
        for t, te in d["tensors"].items():
            for k in KINDS:
                cells = " | ".join(f"{100 * x:.2f}%" for x in te["pooled"][k])
                lines.append(f"| {model} | {t.upper()} | {k} | {cells} | {100 * te['zeroed'][k]['pooled']:.2f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return startup.analysis_main(__file__, __doc__, "supp_tau_band_energy", DEFAULTS, run, markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
