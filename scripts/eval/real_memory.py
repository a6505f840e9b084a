#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Quality against real KV memory (Table 19, Figure 12): token eviction that frees cells, stacked with
llama.cpp's quantized caches, against the bytes the KV cache really allocates.

Per panel (model, context, chunks), on the same chunks of WikiText-2 test, -b = -ub = EVICT_EVERY:

* the f16 base, hook off, flash attention on, saves its logits (``base-fa-on``);
* for each cache type (``-ctk`` = ``-ctv``: f16, q8_0, q4_0) the cache alone (``<cache>-none``) and, for each
  policy whose evictions free their cells (streaming, random_tokens; h2o and scissorhands with
  ELASTICKV_SCOPE=shared: one keep set per sequence) and each budget fraction, the policy under a physical
  cap ELASTICKV_KV_CELLS = envvars.min_kv_cells(budget, ctx, batch, EVICT_EVERY, WARM), the smallest the hook
  accepts (``<cache>-<policy>-<budget>``), flash attention on; all against ``base-fa-on`` (KLD, top-1, PPL);
* reference rows at f16 with flash attention off, against their own f16 base (``base-fa-off``): ElasticKV's
  preset (``ref-<preset>``) and per-head token policies (ELASTICKV_SCOPE=head, no cap: logical eviction,
  every cell stays allocated, ``ref-<policy>-head-<budget>``).

The memory of every row is the KV size llama.cpp's own log reports for that run (record metric kv_real_mib),
never a budget; resident = f16 bytes of a cache of the whole logical context / those bytes.

The grid of a panel is the config's (cache_types, fractions, policies, policy_cache_types: the cache types a
policy runs at, cache_fractions: the fractions a cache type's policy rows run at, reference_preset,
reference_policies); a panel may override any of them.

Every run writes a record and its raw log under ``runs_dir``/<model>-c<ctx>-n<chunks>/; an interrupted sweep
resumes (finished runs are reused, never redone; --force replaces runs made with other settings and an
aggregate written with another config). The aggregate is written after every finished panel, listing the runs
still pending, so a long sweep can be read while it runs; --collect writes it from the finished runs only,
running nothing.

Examples:
  scripts/eval/real_memory.py
  scripts/eval/real_memory.py --collect
  scripts/eval/real_memory.py --set 'panels=[{model: smollm2-135m, ctx: 1024, chunks: 1}]' --set fractions=[0.25]

Exit status: 0 done, 1 an error (one line on stderr), 2 bad arguments.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import asdict
from pathlib import Path

from elastickv import config, envvars, models, paths, ppl, results, startup
from elastickv.progress import bar as progress_bar

DEFAULTS = {
    "artifact": "Table 19",
    "panels": [],
    "cache_types": ["f16", "q8_0", "q4_0"],
    "fractions": [],
    "policies": [],
    "policy_cache_types": {},
    "cache_fractions": {},
    "reference_preset": "sweet",
    "reference_policies": [],
    "evict_every": 64,
    "warm": 128,
    "sink": 64,
    "threads": 2,
    "variant": "cpu",
    "runs_dir": "",
    "output": "",
}

#: grid keys a panel may override
PANEL_GRID = ("cache_types", "fractions", "policies", "policy_cache_types", "cache_fractions", "reference_preset",
              "reference_policies")
#: policies whose evictions can free cells (score policies with ELASTICKV_SCOPE=shared)
FREEING = ("streaming", "h2o", "scissorhands", "random_tokens")
SHARED = ("h2o", "scissorhands")
#: cache types with an exact code per value that llama.cpp's flash attention reads on CPU and CUDA
CACHE_TYPES = ("f16", "q8_0", "q4_0")


def panel_id(p: dict) -> str:
    return f"{p['model']}-c{p['ctx']}-n{p['chunks']}"


def panel_grid(cfg: dict, p: dict) -> dict:
    """The grid of panel ``p``: the config's keys, overridden by the panel's own."""
    return {k: p.get(k, cfg[k]) for k in PANEL_GRID}


def check(cfg: dict) -> None:
    if not cfg["panels"]:
        raise config.ConfigError("panels is empty: e.g. --set 'panels=[{model: smollm2-135m, ctx: 4096, chunks: 1}]'")
    seen = set()
    for p in cfg["panels"]:
        if not isinstance(p, dict) or not {"model", "ctx", "chunks"} <= set(p):
            raise config.ConfigError(f"panel {p!r}: a panel is a mapping with model, ctx and chunks")
        unknown = set(p) - {"model", "ctx", "chunks"} - set(PANEL_GRID)
        if unknown:
            raise config.ConfigError(f"panel {panel_id(p)}: unknown keys {sorted(unknown)}; a panel may set "
                                     f"model, ctx, chunks and {', '.join(PANEL_GRID)}")
        models.entry(p["model"])
        for k in ("ctx", "chunks"):
            if not isinstance(p[k], int) or p[k] < 1:
                raise config.ConfigError(f"panel {panel_id(p)}: {k}={p[k]!r} is not a positive integer")
        if panel_id(p) in seen:
            raise config.ConfigError(f"panel {panel_id(p)} is listed twice")
        seen.add(panel_id(p))
        g = panel_grid(cfg, p)
        for c in g["cache_types"]:
            if c not in CACHE_TYPES:
                raise config.ConfigError(f"cache type {c!r}: accepted {', '.join(CACHE_TYPES)}")
        if "f16" not in g["cache_types"]:
            raise config.ConfigError(f"panel {panel_id(p)}: cache_types must include f16 (the memory reference)")
        for f in g["fractions"]:
            if not isinstance(f, (int, float)) or not 0 < f < 1:
                raise config.ConfigError(f"fraction {f!r}: a budget fraction is in (0, 1)")
        for pol in g["policies"]:
            if pol not in FREEING:
                raise config.ConfigError(f"policy {pol!r} cannot free its evictions; accepted: {', '.join(FREEING)} "
                                         "(pyramidkv belongs in reference_policies)")
        for pol, caches in (g["policy_cache_types"] or {}).items():
            if pol not in g["policies"]:
                raise config.ConfigError(f"policy_cache_types names {pol!r}, which is not in policies")
            if not set(caches) <= set(g["cache_types"]):
                raise config.ConfigError(f"policy_cache_types.{pol}: {caches} not within cache_types "
                                         f"{g['cache_types']}")
        for c, fs in (g["cache_fractions"] or {}).items():
            if c not in g["cache_types"] or not set(fs) <= set(g["fractions"]):
                raise config.ConfigError(f"cache_fractions.{c}: {fs} must name a cache type of cache_types and "
                                         f"fractions within fractions {g['fractions']}")
        for pol in g["reference_policies"]:
            if pol not in envvars.TOKEN_POLICIES:
                raise config.ConfigError(f"reference policy {pol!r}: accepted {', '.join(envvars.TOKEN_POLICIES)}")
        if g["reference_preset"] is not None and g["reference_preset"] not in envvars.PRESETS:
            raise config.ConfigError(f"reference_preset {g['reference_preset']!r}: accepted null or "
                                     f"{', '.join(envvars.PRESETS)}")
        if g["policies"] and not g["fractions"]:
            raise config.ConfigError(f"panel {panel_id(p)}: fractions is empty but policies are set")


def _settings(cfg: dict, p: dict, fa: str, cache: str, hook: dict) -> ppl.PplSettings:
    return ppl.PplSettings(model=p["model"], data=paths.relative(paths.WIKITEXT_TEST), ctx=p["ctx"],
                           batch=cfg["evict_every"], chunks=int(p["chunks"]), flash_attn=fa, cache_type_k=cache,
                           cache_type_v=cache, threads=cfg["threads"], variant=cfg["variant"], hook=hook)


def plan(cfg: dict, p: dict) -> list[dict]:
    """The runs of panel ``p`` in the order they run: the fa-on base, each cache alone, the freeing policies
    (policy by policy, cache type by cache type, budget by budget), then the fa-off base and its references."""
    g = panel_grid(cfg, p)
    common = {"sink": cfg["sink"], "evict_every": cfg["evict_every"], "warm": cfg["warm"]}
    jobs = [{"name": "base-fa-on", "kld": "base", "group": "base", "method": "none", "scope": None, "cache": "f16",
             "budget": None, "cap": None, "settings": _settings(cfg, p, "on", "f16", {})}]
    for c in g["cache_types"]:
        jobs.append({"name": f"{c}-none", "kld": "compare", "group": "cap", "method": "none", "scope": None,
                     "cache": c, "budget": None, "cap": None, "settings": _settings(cfg, p, "on", c, {})})
    for pol in g["policies"]:
        for c in (g["policy_cache_types"] or {}).get(pol, g["cache_types"]):
            for f in (g["cache_fractions"] or {}).get(c, g["fractions"]):
                budget = envvars.budget_text(f)
                cap = envvars.min_kv_cells(budget, p["ctx"], cfg["evict_every"], cfg["evict_every"], cfg["warm"])
                scope = "shared" if pol in SHARED else None
                hook = envvars.hook_env(policy=pol, budget=budget, scope=scope, kv_cells=cap, **common)
                jobs.append({"name": f"{c}-{pol}-{budget}", "kld": "compare", "group": "cap", "method": pol,
                             "scope": scope, "cache": c, "budget": f, "cap": cap,
                             "settings": _settings(cfg, p, "on", c, hook)})
    refs = []
    if g["reference_preset"]:
        hook = envvars.hook_env(preset=g["reference_preset"], **common)
        refs.append({"name": f"ref-{g['reference_preset']}", "kld": "compare", "group": "reference",
                     "method": "elastickv", "scope": None, "cache": "f16", "budget": None, "cap": None,
                     "settings": _settings(cfg, p, "off", "f16", hook)})
    for pol in g["reference_policies"]:
        for f in g["fractions"]:
            budget = envvars.budget_text(f)
            hook = envvars.hook_env(policy=pol, budget=budget, scope="head", **common)
            refs.append({"name": f"ref-{pol}-head-{budget}", "kld": "compare", "group": "reference", "method": pol,
                         "scope": "head", "cache": "f16", "budget": f, "cap": None,
                         "settings": _settings(cfg, p, "off", "f16", hook)})
    if refs:
        jobs.append({"name": "base-fa-off", "kld": "base", "group": "base", "method": "none", "scope": None,
                     "cache": "f16", "budget": None, "cap": None, "settings": _settings(cfg, p, "off", "f16", {})})
        jobs += refs
    return jobs


def existing(job: dict, out: Path) -> dict | None:
    """The finished record of ``job`` under ``out`` (None if it has not run); other settings: RecordMismatch."""
    path = out / f"{job['name']}.json"
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    if rec.get("settings") != asdict(job["settings"]) | {"kld": job["kld"]}:
        raise ppl.RecordMismatch(f"{paths.relative(path)} holds a run with other settings; use --force to replace it")
    return rec


def wall_s(rec: dict) -> float:
    return (dt.datetime.fromisoformat(rec["finished"]) - dt.datetime.fromisoformat(rec["started"])).total_seconds()


def base_entry(rec: dict, path: Path) -> dict:
    m = rec["metrics"]
    return {"ppl": m["ppl"], "kv_real_mib": m["kv_real_mib"], "kv_cells": m["kv_cells"], "wall_s": wall_s(rec),
            "record": paths.relative(path)}


def entry(p: dict, job: dict, rec: dict, base_ppl: float, path: Path) -> dict:
    m = rec["metrics"]
    return {
        "panel": panel_id(p), "model": p["model"], "ctx": p["ctx"], "chunks": p["chunks"], "row": job["name"],
        "group": job["group"], "method": job["method"], "scope": job["scope"], "cache_type": job["cache"],
        "flash_attn": job["settings"].flash_attn == "on", "budget": job["budget"], "kv_cells_cap": job["cap"],
        "kv_real_mib": m["kv_real_mib"], "kv_cells": m["kv_cells"], "n_ctx": m["n_ctx"],
        "kv_bytes_per_token": m["kv_bytes_per_token"], "kv_buffer_mib": m["kv_buffer_mib"],
        "hook_state_mib": m["hook_state_mib"], "peak_rss_mib": m["peak_rss_mib"], "resident": m["resident"],
        "kept_cells": m.get("kept_cells"), "resident_cells": m.get("resident_cells"),
        "union_kept_cells": m.get("union_kept_cells"), "freed_cells": m.get("freed_cells"),
        "max_used_cells": m.get("max_used_cells"),
        "sparsity_k": m["sparsity_k_all"] if job["method"] == "elastickv" else None,
        "sparsity_v": m["sparsity_v_all"] if job["method"] == "elastickv" else None,
        "ppl": m["ppl"], "ppl_delta_pct": 100.0 * (m["ppl"]["value"] / base_ppl - 1.0), "kld": m["kld"],
        "same_top_p_pct": m["same_top_p_pct"], "ln_ppl_ratio": m["ln_ppl_ratio"], "wall_s": wall_s(rec),
        "elastickv": rec["elastickv"] if rec["env"].get("ELASTICKV") == "1" else None,
        "record": paths.relative(path),
    }


NOTES = ("KLD, top-1 agreement and PPL against the f16 base of the same panel and flash-attention setting (group "
         "cap: fa on, against base-fa-on; group reference: fa off, against base-fa-off), -b = -ub = EVICT_EVERY, "
         "sink {sink}, warm {warm}. Group cap: -ctk = -ctv = cache_type; method none is the cache alone, a "
         "policy evicts cells at the budget fraction of the logical context (scope shared for h2o/scissorhands: "
         "one keep set per sequence, so every eviction frees a cell) in a cache of kv_cells_cap = "
         "envvars.min_kv_cells cells per stream, the least the hook accepts. Group reference: ElasticKV's preset "
         "and per-head token policies (scope head, no cap: evicted cells stay allocated, resident 1.00x). "
         "kv_real_mib: the KV size of llama.cpp's log for that run (never a budget); resident: f16 bytes of the "
         "whole logical context / kv_real_mib. pending: runs of the config not finished when this file was "
         "written.")


def assemble(cfg: dict, collect_only: bool, force: bool, bar: object | None) -> tuple[dict, list]:
    """Runs (or, with ``collect_only``, only reads) every panel's runs in order; writes the aggregate after each
    panel. Returns (aggregate, sources)."""
    runs_dir = paths.ROOT / cfg["runs_dir"]
    plans = [(p, plan(cfg, p)) for p in cfg["panels"]]
    panels, entries, sources = [], [], []
    agg = None
    for i, (p, jobs) in enumerate(plans):
        out = runs_dir / panel_id(p)
        bases: dict[str, dict] = {}
        pending = []
        done_entries = []
        for job in jobs:
            try:
                rec = existing(job, out)  # a finished run is reused, also with --force
            except ppl.RecordMismatch:
                if not force:
                    raise
                rec = None  # made with other settings: --force replaces it
            if rec is None and not collect_only:
                rec = ppl.run(job["name"], job["settings"], out, kld=job["kld"], force=force)
            if bar is not None:
                bar.update()
            if rec is None:
                pending.append(job["name"])
                continue
            path = out / f"{job['name']}.json"
            sources.append(path)
            if job["group"] == "base":
                bases[job["name"]] = base_entry(rec, path)
                continue
            base = bases.get("base-fa-on" if job["settings"].flash_attn == "on" else "base-fa-off")
            if base is None:  # --collect: a compare run finished before a later edit removed its base
                pending.append(job["name"])
                continue
            done_entries.append(entry(p, job, rec, base["ppl"]["value"], path))
        entries += done_entries
        panels.append({"panel": panel_id(p), "model": p["model"], "ctx": p["ctx"], "chunks": p["chunks"],
                       "base": bases.get("base-fa-on"), "base_fa_off": bases.get("base-fa-off"),
                       "runs": len(jobs), "pending": pending})
        later = [{"panel": panel_id(q), "model": q["model"], "ctx": q["ctx"], "chunks": q["chunks"], "base": None,
                  "base_fa_off": None, "runs": len(js), "pending": [j["name"] for j in js]} for q, js in plans[i + 1:]]
        if not collect_only and i + 1 < len(plans):
            agg = _write(cfg, panels + later, entries, sources, force)  # readable while later panels run
    agg = _write(cfg, panels, entries, sources, force)
    return agg, sources


def _write(cfg: dict, panels: list, entries: list, sources: list, force: bool) -> dict:
    notes = NOTES.format(sink=cfg["sink"], warm=cfg["warm"])
    agg = results.aggregate(cfg["artifact"], "scripts/eval/real_memory.py", cfg,
                            {"panels": panels, "entries": entries}, sources, notes)
    results.write_aggregate(paths.ROOT / cfg["output"], agg, force=force)
    return agg


def run(cfg: dict, force: bool = False, collect_only: bool = False) -> dict:
    check(cfg)
    total = sum(len(plan(cfg, p)) for p in cfg["panels"])
    if collect_only:
        agg, _ = assemble(cfg, True, False, None)
        return agg
    for p in cfg["panels"]:
        models.fetch(p["model"])  # before the first run: a model that cannot be fetched stops nothing midway
    with progress_bar(total, f"{cfg['artifact']} runs") as bar:
        agg, _ = assemble(cfg, False, force, bar)
    return agg


def markdown(agg: dict) -> str:
    lines = ["| panel | row | KV MiB | resident | KLD | top-1 % | ΔPPL |", "|" + "---|" * 7]
    for e in agg["data"]["entries"]:
        lines.append(f"| {e['panel']} | {e['row']} | {e['kv_real_mib']:.2f} | {e['resident']:.2f}x | "
                     f"{e['kld']['value']:.4f} | {e['same_top_p_pct']['value']:.1f} | {e['ppl_delta_pct']:+.2f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = startup.driver_parser(__doc__, "table19_real_memory")
    ap.add_argument("--collect", action="store_true",
                    help="run nothing: write the aggregate from the runs already finished (the others are pending)")
    args = startup.parse_args(ap, argv)
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides)
        agg = run(cfg, force=args.force, collect_only=args.collect)
    except startup.driver_errors(ValueError) as e:
        return startup.fail(__file__, e)
    print(markdown(agg))
    pending = sum(len(p["pending"]) for p in agg["data"]["panels"])
    print(f"\nreal_memory: {cfg['output']} written ({len(agg['data']['entries'])} rows, {pending} runs pending)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
