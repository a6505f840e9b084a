#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Head-to-head of every hook policy at matched kept fractions (Table 16, Figure 9).

For each model, the f16 baseline (hook off) saves its logits; then every policy of ELASTICKV_POLICY runs on
the same chunks at each target kept fraction, with -b = -ub = EVICT_EVERY and flash attention off (token
policies need the attention probabilities), and is compared to the baseline (PPL, KL divergence, top-1
agreement). Token policies (streaming, h2o, scissorhands, pyramidkv, random_tokens) get ELASTICKV_BUDGET =
the fraction of cells kept per sequence, layer and KV head; element policies (random_entries, topk_entries)
the fraction of K/V entries kept; ElasticKV the scales of ``elastickv_scales``. The kept fraction each run
really reached is read from its ELASTICKV_STATS (at the last pass of each chunk) and reported beside the
target. Resident memory is the real KV buffer size: every policy here keeps the dense buffer (1.00x), so
"logical" = kept fraction is what an implementation that frees the cells or stores only non-zeros could
save at best.

Every run writes a record and its raw log under ``runs_dir``; an interrupted sweep resumes (finished runs
are reused, never redone; --force replaces runs made with other settings).

Examples:
  scripts/eval/head_to_head.py
  scripts/eval/head_to_head.py --set kept=[0.5] --set policies=[h2o]
  scripts/eval/head_to_head.py --set models=[qwen2.5-coder-0.5b] --set 'chunks={qwen2.5-coder-0.5b: 1}' --set ctx=2048

Exit status: 0 done, 1 an error (one line on stderr), 2 bad arguments.
"""

from __future__ import annotations

import sys
from pathlib import Path

from elastickv import config, envvars, models, paths, policies, ppl, results, startup
from elastickv.progress import bar as progress_bar

DEFAULTS = {
    "artifact": "Table 16",
    "models": [],
    "ctx": 4096,
    "chunks": {},
    "evict_every": 64,
    "flash_attn": "off",
    "threads": 2,
    "variant": "cpu",
    "sink": 64,
    "kept": [],
    "policies": [],
    "elastickv_scales": {},
    "runs_dir": "",
    "output": "",
}


def settings(cfg: dict, model: str, policy: str | None, kept: float | None) -> ppl.PplSettings:
    hook = envvars.matched_env(policy, kept, cfg["elastickv_scales"], sink=cfg["sink"],
                           evict_every=cfg["evict_every"])
    return ppl.PplSettings(model=model, data=paths.relative(paths.WIKITEXT_TEST), ctx=cfg["ctx"],
                           batch=cfg["evict_every"], chunks=int(cfg["chunks"][model]), flash_attn=cfg["flash_attn"],
                           threads=cfg["threads"], variant=cfg["variant"], hook=hook)


def entry(model: str, policy: str, kept: float, rec: dict, base_ppl: float, rec_path: Path) -> dict:
    m = rec["metrics"]
    if policy == "elastickv":
        measured = 1 - (m["sparsity_k_all"] + m["sparsity_v_all"]) / 2
        unit = "entries"
    elif policy in policies.TOKEN_POLICIES:
        measured, unit = m["kept_cells"], "cells"
    else:
        measured, unit = m["kept_entries"], "entries"
    return {
        "model": model, "policy": policy, "target_kept": kept, "kept": measured, "kept_unit": unit,
        "ppl": m["ppl"], "ppl_delta_pct": 100.0 * (m["ppl"]["value"] / base_ppl - 1.0),
        "kld": m["kld"], "same_top_p_pct": m["same_top_p_pct"], "ln_ppl_ratio": m["ln_ppl_ratio"],
        "kv_mib": m["kv_mib"], "resident": m["resident"], "logical_kv_mib": m["kv_mib"] * measured,
        "kept_per_layer": m.get("kept_per_layer"), "elastickv": rec["elastickv"], "record": paths.relative(rec_path),
    }


def run(cfg: dict, force: bool = False) -> dict:
    for model in cfg["models"]:
        models.entry(model)
        if model not in cfg["chunks"]:
            raise config.ConfigError(f"chunks has no entry for {model}; e.g. --set 'chunks={{{model}: 1}}'")
    for p in cfg["policies"]:
        policies.policy(p)
    if not cfg["kept"]:
        raise config.ConfigError("kept is empty: give the target kept fractions, e.g. kept=[0.5]")
    for k in cfg["kept"]:
        if not 0 < float(k) <= 1:
            raise config.ConfigError(f"kept={k}: a kept fraction is in (0, 1]")
    all_policies = ["elastickv"] + list(cfg["policies"])
    runs_dir = paths.ROOT / cfg["runs_dir"]
    entries, sources, baselines = [], [], {}
    with progress_bar(len(cfg["models"]) * (1 + len(all_policies) * len(cfg["kept"])), f"{cfg['artifact']} runs") as bar:
        for model in cfg["models"]:
            out = runs_dir / f"{model}-c{cfg['ctx']}-n{cfg['chunks'][model]}"
            base = ppl.run("baseline-base", settings(cfg, model, None, None), out, kld="base", force=force)
            bar.update()
            base_ppl = base["metrics"]["ppl"]["value"]
            baselines[model] = {"ppl": base["metrics"]["ppl"], "kv_mib": base["metrics"]["kv_mib"],
                                "record": paths.relative(out / "baseline-base.json")}
            sources.append(out / "baseline-base.json")
            for kept in cfg["kept"]:
                for policy in all_policies:
                    name = f"{policy}-{envvars.budget_text(kept)}"
                    rec = ppl.run(name, settings(cfg, model, policy, kept), out, kld="compare", force=force)
                    entries.append(entry(model, policy, kept, rec, base_ppl, out / f"{name}.json"))
                    sources.append(out / f"{name}.json")
                    bar.update()
    notes = ("KLD and top-1 agreement against the f16 baseline's logits of the same chunks, flash attention "
             f"{cfg['flash_attn']}, -b = -ub = {cfg['evict_every']}, sink {cfg['sink']} for every policy. kept: "
             "fraction of cells (token policies: per layer and KV head, at the last pass of each chunk) or of "
             "K/V entries outside the sinks (element policies, ElasticKV: all cells) really kept. resident: "
             "f16 bytes / real KV bytes (1.00x for every policy: evicted cells and zeros stay in the dense "
             "buffer); logical_kv_mib = kv_mib x kept. ElasticKV scales from a Gaussian calibration, so its "
             "kept fraction differs from the target: compare on the measured kept axis.")
    agg = results.aggregate(cfg["artifact"], "scripts/eval/head_to_head.py", cfg,
                            {"entries": entries, "baselines": baselines}, sources, notes)
    results.write_aggregate(paths.ROOT / cfg["output"], agg, force=force)
    return agg


def markdown(agg: dict) -> str:
    lines = ["| model | policy | target kept | kept | ΔPPL | KLD | top-1 % |", "|" + "---|" * 7]
    for e in agg["data"]["entries"]:
        lines.append(f"| {e['model']} | {e['policy']} | {e['target_kept']:.2f} | {e['kept']:.3f} {e['kept_unit']} | "
                     f"{e['ppl_delta_pct']:+.2f}% | {e['kld']['value']:.4f} | {e['same_top_p_pct']['value']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = startup.parse_args(startup.driver_parser(__doc__, "table16_head_to_head"), argv)
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides)
        agg = run(cfg, force=args.force)
    except startup.driver_errors(ValueError) as e:
        return startup.fail(__file__, e)
    print(markdown(agg))
    print(f"\nhead_to_head: {cfg['output']} written ({len(agg['data']['entries'])} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
