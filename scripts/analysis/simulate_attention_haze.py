#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 10: attention entropy and selectivity against sparsity, simulated on the models' real K/V.

For every layer and KV head of the dump (kvdump: one pass over 2048 tokens of WikiText-2 test), the threshold
scale is swept (the same scale on K and V, plus the sweet preset 0.45/0.50); at each point the ElasticKV mask
(tau = scale * mean|x| over positions >= SINK, zero |x| < tau) and, as the control, random zeroing of exactly
as many region entries per (layer, head, tensor) (several seeds) are applied to the real K and V.

The dumps hold no queries, so attention is a PROXY (a simulation, not the model's attention): the queries are
the model's own dense keys of the last ``n_queries`` positions, each attending with softmax(q.k / sqrt(d))
to the keys of strictly earlier positions (sinks included). Queries are never sparsified.

Per point and method, mean and standard error over layers x heads of:
  sparsity_{k,v}        zero fraction of the whole cache (sinks included); *_region: positions >= SINK only
  entropy               attention entropy in nats (mean over queries); entropy_delta: minus the dense cache's
  entropy_norm          entropy / log(number of visible keys) (1 = uniform)
  effective_keys        exp(entropy)
  topk_mass             attention mass on the ``topk`` most attended keys (selectivity); topk_mass_delta
  out_rel_err           ||O - O_dense||_F / ||O_dense||_F of the attention outputs p @ V of the queries

Examples:
  scripts/analysis/simulate_attention_haze.py
  scripts/analysis/simulate_attention_haze.py --set models=[smollm2-135m] --set layers=[0,1] --set output=/tmp/t10.json
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

SCRIPT = "scripts/analysis/simulate_attention_haze.py"
DEFAULTS = {
    "artifact": "Table 10",
    "models": ["smollm2-135m", "qwen2.5-coder-0.5b"],
    "ctx": 2048,            # the kvdump dump: build/cache/dumps/<model>-c<ctx>
    "layers": None,         # None: all layers; a list runs a subset
    "sink": 64,             # positions never thresholded nor counted
    "scales": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
    "presets": {"sweet": {"scale_k": 0.45, "scale_v": 0.50}},
    "n_queries": 64,        # proxy queries: the keys of the last n_queries positions
    "topk": 8,              # selectivity: attention mass on the top-k keys
    "seeds": [0, 1, 2],     # random zeroing at matched sparsity
    "output": "results/attention_entropy_results.json",
}
METRICS = ("sparsity_k", "sparsity_v", "sparsity_k_region", "sparsity_v_region", "entropy", "entropy_delta",
           "entropy_norm", "effective_keys", "topk_mass", "topk_mass_delta", "out_rel_err")


def points(cfg: dict) -> list[dict]:
    out = [{"label": f"s{s:.2f}", "scale_k": float(s), "scale_v": float(s)} for s in cfg["scales"]]
    for name, p in (cfg["presets"] or {}).items():
        out.append({"label": name, "scale_k": float(p["scale_k"]), "scale_v": float(p["scale_v"])})
    return out


def unit_metrics(layer: ka.LayerKV, h: int, kh: np.ndarray, vh: np.ndarray, reg: np.ndarray, qi: np.ndarray,
                 dense: dict, topk: int) -> dict:
    """The metrics of one head with K, V replaced by kh, vh (the full-layer arrays)."""
    q = layer.k[qi, h, :]
    p, o, nvis = ka.attend(q, layer.pos[qi], kh[:, h, :], vh[:, h, :], layer.pos)
    st = ka.attention_stats(p, nvis, topk)
    return {"sparsity_k": ka.zero_fraction(kh[:, h]), "sparsity_v": ka.zero_fraction(vh[:, h]),
            "sparsity_k_region": ka.zero_fraction(kh[reg, h]), "sparsity_v_region": ka.zero_fraction(vh[reg, h]),
            **st, "entropy_delta": st["entropy"] - dense["entropy"],
            "topk_mass_delta": st["topk_mass"] - dense["topk_mass"], "out_rel_err": ka.rel_error(o, dense["out"])}


def analyse_model(cfg: dict, model: str, dumps: Path | None = None) -> tuple[dict, Path]:
    dp, source = ka.open_dump(model, cfg["ctx"], dumps)
    layers = ka.select_layers(dp.layers, cfg["layers"])
    pts = points(cfg)
    per = {(pt["label"], meth): {m: [] for m in METRICS} for pt in pts for meth in ("elastickv", "random")}
    dense_units = {m: [] for m in ("entropy", "entropy_norm", "effective_keys", "topk_mass")}
    n_head = n_cells = None
    with progress_bar(len(layers) * len(pts), f"{model} layers x scales") as bar:
        for layer in ka.load_layers(dp, layers):
            n_cells, n_head = layer.k.shape[:2]
            reg = ka.region(layer.pos, cfg["sink"])
            qi = ka.query_rows(n_cells, cfg["n_queries"])
            dense = []
            for h in range(n_head):
                p, o, nvis = ka.attend(layer.k[qi, h], layer.pos[qi], layer.k[:, h], layer.v[:, h], layer.pos)
                st = ka.attention_stats(p, nvis, cfg["topk"])
                dense.append({**st, "out": o})
                for m in dense_units:
                    dense_units[m].append(st[m])
            for ip, pt in enumerate(pts):
                mk = ka.ekv_mask(layer.k, reg, pt["scale_k"])
                mv = ka.ekv_mask(layer.v, reg, pt["scale_v"])
                kh, vh = ka.zero(layer.k, mk), ka.zero(layer.v, mv)
                ck, cv = mk.sum(axis=(0, 2)), mv.sum(axis=(0, 2))
                rand = []
                for seed in cfg["seeds"]:
                    rk = ka.matched_random_mask(layer.k, reg, ck, np.random.default_rng([seed, layer.layer, ip, 0]))
                    rv = ka.matched_random_mask(layer.v, reg, cv, np.random.default_rng([seed, layer.layer, ip, 1]))
                    rand.append((ka.zero(layer.k, rk), ka.zero(layer.v, rv)))
                for h in range(n_head):
                    e = unit_metrics(layer, h, kh, vh, reg, qi, dense[h], cfg["topk"])
                    r = [unit_metrics(layer, h, a, b, reg, qi, dense[h], cfg["topk"]) for a, b in rand]
                    for m in METRICS:
                        per[(pt["label"], "elastickv")][m].append(e[m])
                        per[(pt["label"], "random")][m].append(float(np.mean([x[m] for x in r])))
                bar.update()
    out_points = []
    for pt in pts:
        out_points.append({**pt, "elastickv": ka.summarise(per[(pt["label"], "elastickv")]),
                           "random": ka.summarise(per[(pt["label"], "random")])})
    return {"layers": layers, "n_head": n_head, "n_cells": n_cells, "n_units": len(layers) * n_head,
            "dense": ka.summarise(dense_units), "points": out_points}, source


NOTES = ("SIMULATION on real K/V: the dumps (one llama-perplexity pass over {ctx} tokens of WikiText-2 test, f16 "
         "cache, flash attention on) hold the models' own keys and values but no queries. Proxy queries: the "
         "model's own dense (never sparsified) keys of the last {nq} positions; each attends with softmax(q.k / "
         "sqrt(head_dim)) to the keys of strictly earlier positions, sinks included (self excluded). This is not "
         "the model's attention: keys and queries come from different projections, so entropy levels are "
         "illustrative; the comparison ElasticKV vs random at equal sparsity is what the table shows. ElasticKV: "
         "tau = scale * mean|x| over positions >= {sink} per layer/head/tensor, zero |x| < tau (the numpy reference, "
         "identical to the hook's output). Random: per layer/head/tensor exactly as many entries as ElasticKV "
         "zeroes, uniformly among the non-zero entries of positions >= {sink}; metrics averaged over seeds {seeds} "
         "per unit. Each value: mean and standard error over layers x KV heads (units not independent: the SE "
         "is a spread indicator, not a CI). entropy in nats; entropy_norm = entropy/log(visible keys); "
         "topk_mass = attention mass on the {topk} most attended keys; out_rel_err = ||O-O_dense||_F/||O_dense||_F "
         "over the proxy queries; *_delta = value - dense value, paired per unit. sparsity_k/v over the whole "
         "cache (sinks included); *_region over positions >= {sink}.")


def run(cfg: dict, force: bool = False, dumps: Path | None = None) -> dict:
    """Computes the table for every model of the config and writes the aggregate; returns it."""
    ka.check_common(cfg)
    if not cfg["seeds"] or cfg["topk"] < 1 or not 0 < cfg["n_queries"] < cfg["ctx"] - cfg["sink"]:
        raise config.ConfigError("seeds must be non-empty, topk >= 1 and 0 < n_queries < ctx - sink")
    data, sources, timing = {"models": {}}, [], {}
    for model in cfg["models"]:
        t0 = time.time()
        data["models"][model], src = analyse_model(cfg, model, dumps)
        timing[model] = round(time.time() - t0, 1)
        sources.append(src)
    data["seconds"] = timing
    notes = NOTES.format(ctx=cfg["ctx"], nq=cfg["n_queries"], sink=cfg["sink"], seeds=cfg["seeds"], topk=cfg["topk"])
    agg = results.aggregate(cfg["artifact"], SCRIPT, cfg, ka.jsonable(data), sources, notes)
    results.write_aggregate(paths.ROOT / cfg["output"], agg, force=force)
    return agg


def _f(ms: dict, fmt: str = ".4f") -> str:
    if ms["mean"] is None:
        return "—"
    se = f" ± {ms['se']:{fmt}}" if ms["se"] is not None else ""
    return f"{ms['mean']:{fmt}}{se}"


def markdown(agg: dict) -> str:
    lines = []
    for model, d in agg["data"]["models"].items():
        lines += [f"\n{model} ({d['n_units']} layer x head units; dense entropy {_f(d['dense']['entropy'])} nats)",
                  "| point | method | K sp. | entropy | Δentropy | top-k mass | out rel err |", "|" + "---|" * 7]
        for pt in d["points"]:
            for meth in ("elastickv", "random"):
                m = pt[meth]
                lines.append(f"| {pt['label']} | {meth} | {100 * m['sparsity_k']['mean']:.1f}% | {_f(m['entropy'])} | "
                             f"{_f(m['entropy_delta'])} | {_f(m['topk_mass'])} | {_f(m['out_rel_err'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return startup.analysis_main(__file__, __doc__, "table10_attention_haze", DEFAULTS, run, markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
