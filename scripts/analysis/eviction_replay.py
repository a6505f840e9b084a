#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Supplementary: token-eviction policies (H2O, ScissorHands, StreamingLLM) replayed on the models' real K/V at
the memory budget of ElasticKV's sweet preset, against ElasticKV itself.

For every layer and KV head of the dump (kvdump: one pass over 2048 tokens of WikiText-2 test):
  * ElasticKV (sweet): zero |x| < tau, tau = scale * mean|x| over positions >= SINK. Its kept fraction is
    f = non-zeros of K and V together / all K and V values of the head (sinks included).
  * budget B = round(f * n_tokens) whole tokens, so an eviction policy stores the same number of values.
    Every policy keeps the sinks (positions < SINK); the rest is split heavy : recent = 1 - recent_fraction :
    recent_fraction (H2O's 80/20 by default); the recent window is the newest tokens.
  * The policies are replayed ONLINE: tokens arrive ``stride`` at a time in position order; each arriving
    token's query attends (proxy attention, below) to the cached tokens; when the cache exceeds B the
    lowest-scored token outside the sinks and the recent window is evicted (ties: oldest first).
      H2O           score = attention accumulated from every query so far (heavy hitters)
      ScissorHands  score = number of the last ``history`` queries for which the token was important, i.e.
                    its attention weight exceeded 1 / (number of keys that query saw) (persistence)
      StreamingLLM  sinks + the newest B - SINK tokens (no score)
Proxy attention (dumps hold no queries; a simulation): the query of position t is the dense key of position
t, softmax(q.k / sqrt(d)) over the cached keys of strictly earlier positions.

Reported per method (mean and standard error over layers x heads, and pooled):
  energy_k / energy_v  fraction of the L2 energy of K / V (positions >= SINK) removed (zeroed or evicted)
  attn_out             ||O - O_dense||_F / ||O_dense||_F of the proxy attention outputs of the last
                       ``n_queries`` positions, over the final cache (evicted tokens are not attended)
  kept_values          fraction of the head's K and V values still stored (the budget check)

Examples:
  scripts/analysis/eviction_replay.py
  scripts/analysis/eviction_replay.py --set models=[smollm2-135m] --set layers=[0,1] --set output=/tmp/ev.json
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

SCRIPT = "scripts/analysis/eviction_replay.py"
DEFAULTS = {
    "artifact": "Supplementary: eviction replay",
    "models": ["smollm2-135m", "qwen2.5-coder-0.5b"],
    "ctx": 2048,
    "layers": None,
    "sink": 64,
    "scale_k": 0.45,
    "scale_v": 0.50,
    "recent_fraction": 0.2,
    "history": 256,
    "stride": 4,
    "n_queries": 64,
    "output": "results/supplementary/eviction_replay.json",
}
METHODS = ("elastickv", "h2o", "scissorhands", "streamingllm")
METRICS = ("energy_k", "energy_v", "attn_out", "kept_values", "kept_tokens")


def evicted_metrics(layer: ka.LayerKV, h: int, keep: np.ndarray, reg: np.ndarray, qi: np.ndarray,
                    dense_out: np.ndarray) -> dict:
    """Damage of a token-eviction keep mask on head h."""
    k, v = layer.k[:, h], layer.v[:, h]
    kk = np.where(keep[:, None], k, 0)
    vv = np.where(keep[:, None], v, 0)
    _, o, _ = ka.attend(k[qi], layer.pos[qi], k, v, layer.pos, keep=keep)
    return {"energy_k": ka.energy_removed(k[reg], kk[reg]), "energy_v": ka.energy_removed(v[reg], vv[reg]),
            "attn_out": ka.rel_error(o, dense_out), "kept_values": float(keep.mean()),
            "kept_tokens": int(keep.sum())}


def analyse_model(cfg: dict, model: str, dumps: Path | None = None) -> tuple[dict, Path]:
    dp, source = ka.open_dump(model, cfg["ctx"], dumps)
    layers = ka.select_layers(dp.layers, cfg["layers"])
    per = {m: {x: [] for x in METRICS} for m in METHODS}
    sums = {m: {"k_removed": 0.0, "v_removed": 0.0} for m in METHODS}
    tot = {"k": 0.0, "v": 0.0}
    budgets = []
    with progress_bar(len(layers), f"{model} layers") as bar:
        for layer in ka.load_layers(dp, layers):
            n, n_head = layer.k.shape[:2]
            reg = ka.region(layer.pos, cfg["sink"])
            n_sink = int((~reg).sum())
            qi = ka.query_rows(n, cfg["n_queries"])
            kh = ka.zero(layer.k, ka.ekv_mask(layer.k, reg, cfg["scale_k"]))
            vh = ka.zero(layer.v, ka.ekv_mask(layer.v, reg, cfg["scale_v"]))
            for h in range(n_head):
                k, v = layer.k[:, h], layer.v[:, h]
                _, dense_out, _ = ka.attend(k[qi], layer.pos[qi], k, v, layer.pos)
                kept = 1.0 - (ka.zero_fraction(kh[:, h]) + ka.zero_fraction(vh[:, h])) / 2.0
                _, o, _ = ka.attend(k[qi], layer.pos[qi], kh[:, h], vh[:, h], layer.pos)
                res = {"elastickv": {"energy_k": ka.energy_removed(k[reg], kh[reg, h]),
                                     "energy_v": ka.energy_removed(v[reg], vh[reg, h]),
                                     "attn_out": ka.rel_error(o, dense_out), "kept_values": kept, "kept_tokens": n}}
                budget = ka.eviction_budget(n, kept, n_sink)
                heavy, recent = ka.split_budget(budget, n_sink, cfg["recent_fraction"])
                budgets.append({"layer": layer.layer, "head": h, "kept_fraction": kept, "budget": budget,
                                "heavy": heavy, "recent": recent})
                keeps = {"h2o": ka.h2o_keep(k, k, layer.pos, budget, cfg["sink"], recent, cfg["stride"]),
                         "scissorhands": ka.scissorhands_keep(k, k, layer.pos, budget, cfg["sink"], recent,
                                                              cfg["history"], cfg["stride"]),
                         "streamingllm": ka.recent_keep(layer.pos, budget, cfg["sink"])}
                for m, keep in keeps.items():
                    res[m] = evicted_metrics(layer, h, keep, reg, qi, dense_out)
                ek = float(np.sum(k[reg].astype(np.float64) ** 2))
                ev = float(np.sum(v[reg].astype(np.float64) ** 2))
                tot["k"] += ek
                tot["v"] += ev
                for m in METHODS:
                    for x in METRICS:
                        per[m][x].append(res[m][x])
                    sums[m]["k_removed"] += res[m]["energy_k"] * ek
                    sums[m]["v_removed"] += res[m]["energy_v"] * ev
            bar.update()
    out = {"layers": layers, "n_units": len(budgets), "budgets": budgets, "methods": {}}
    ekv = {x: np.asarray(per["elastickv"][x]) for x in ("energy_k", "energy_v", "attn_out")}
    for m in METHODS:
        entry = {x: ka.mean_se(per[m][x]) for x in METRICS}
        entry["pooled_energy_k"] = sums[m]["k_removed"] / tot["k"]
        entry["pooled_energy_v"] = sums[m]["v_removed"] / tot["v"]
        entry["geomean_ratio_to_elastickv"] = {}
        for x, e in ekv.items():
            r = ka.damage_ratio(per[m][x], e)
            r = r[np.isfinite(r) & (r > 0)]
            entry["geomean_ratio_to_elastickv"][x] = ka.geomean(r) if r.size else None
        out["methods"][m] = entry
    return out, source


NOTES = ("SIMULATION on real K/V of one llama-perplexity pass over {ctx} tokens of WikiText-2 test (f16 cache). "
         "ElasticKV sweet (scale_k {sk}, scale_v {sv}, sink {sink}) zeroes entries; its kept fraction f (non-zeros "
         "of K and V over all values of the head, sinks included) sets each eviction policy's budget B = round(f * "
         "tokens) per layer / KV head, so every method stores the same number of values. All keep the {sink} sink "
         "tokens; H2O and ScissorHands split the rest heavy:recent = {heavy:g}:{recent:g} (recent = newest tokens). "
         "Online replay in position order, {stride} tokens per step; proxy queries (dumps hold no queries): the "
         "dense key of each arriving position, softmax(q.k/sqrt(d)) over cached keys of strictly earlier "
         "positions. H2O score = accumulated attention; ScissorHands score = number of the last {hist} queries in "
         "which the token's weight exceeded 1/(keys seen); StreamingLLM = sinks + newest tokens; eviction of the "
         "lowest score outside sinks and recent window, ties oldest first. energy_k/v = fraction of the L2 energy "
         "of positions >= {sink} removed (zeroed or evicted); attn_out = ||O - O_dense||_F/||O_dense||_F for the "
         "proxy queries of the last {nq} positions over the final cache; mean and standard error over layers x "
         "heads, pooled_* = removed energy summed over units / total energy; geomean_ratio_to_elastickv = "
         "geometric mean over units of method / ElasticKV. Real H2O/ScissorHands score with the model's queries, "
         "per query head; this replay is an approximation of them.")


def run(cfg: dict, force: bool = False, dumps: Path | None = None) -> dict:
    """Replays the policies for every model of the config and writes the aggregate; returns it."""
    ka.check_common(cfg)
    if not 0 <= cfg["recent_fraction"] <= 1 or cfg["history"] < 1 or cfg["stride"] < 1:
        raise config.ConfigError("recent_fraction must be in [0, 1], history and stride >= 1")
    if not 0 < cfg["n_queries"] < cfg["ctx"] - cfg["sink"]:
        raise config.ConfigError("0 < n_queries < ctx - sink")
    data, sources, timing = {"models": {}}, [], {}
    for model in cfg["models"]:
        t0 = time.time()
        data["models"][model], src = analyse_model(cfg, model, dumps)
        timing[model] = round(time.time() - t0, 1)
        sources.append(src)
    data["seconds"] = timing
    notes = NOTES.format(ctx=cfg["ctx"], sk=cfg["scale_k"], sv=cfg["scale_v"], sink=cfg["sink"],
                         heavy=100 * (1 - cfg["recent_fraction"]), recent=100 * cfg["recent_fraction"],
                         stride=cfg["stride"], hist=cfg["history"], nq=cfg["n_queries"])
    agg = results.aggregate(cfg["artifact"], SCRIPT, cfg, ka.jsonable(data), sources, notes)
    results.write_aggregate(paths.ROOT / cfg["output"], agg, force=force)
    return agg


def markdown(agg: dict) -> str:
    lines = ["| model | method | K energy removed | V energy removed | attn out rel err | kept values |",
             "|" + "---|" * 6]
    for model, d in agg["data"]["models"].items():
        for m, e in d["methods"].items():
            lines.append(f"| {model} | {m} | {100 * e['pooled_energy_k']:.2f}% | {100 * e['pooled_energy_v']:.2f}% | "
                         f"{e['attn_out']['mean']:.4f} ± {e['attn_out']['se'] or 0:.4f} | "
                         f"{100 * e['kept_values']['mean']:.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return startup.analysis_main(__file__, __doc__, "supp_eviction_replay", DEFAULTS, run, markdown, argv)


if __name__ == "__main__":
    sys.exit(main())
