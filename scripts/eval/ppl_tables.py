#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Perplexity tables of the paper (Tables 2, 4, 5; Table 1 reuses it): one experiment config, many runs.

For every model and context of the config, the rows (f16 baseline, ElasticKV settings, llama.cpp's q8_0 /
q5_1 / q4_0 caches) are measured on the same chunks of WikiText-2 test with -b = -ub = EVICT_EVERY (so every
ubatch attends to a cache the hook has already sparsified, SPEC.md §2), and each against the baseline's
logits (KL divergence, top-1 agreement). Every run writes a record and its raw log under ``runs_dir``; the
table's numbers go to ``output``. An interrupted sweep resumes: finished runs are reused, never redone.

Examples:
  scripts/eval/ppl_tables.py --config table2_ppl
  scripts/eval/ppl_tables.py --config table5_sink_ablation --set chunks={smollm2-135m:3}
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from elastickv import config, envvars, logparse, models, paths, ppl, results, startup
from elastickv.progress import bar as progress_bar

DEFAULTS = {
    "artifact": "",            # e.g. "Table 2"
    "models": [],              # names from configs/models.yaml
    "contexts": [],            # [{ctx: 512, chunks: {model: n}}]: a model without chunks at a ctx is skipped
    "evict_every": 64,         # ELASTICKV_EVICT_EVERY, also -b and -ub
    "flash_attn": "on",
    "threads": 2,
    "variant": "cpu",
    "rows": [],                # [{name, cache, preset | scale_k/scale_v, sink, mode, warm}]
    "runs_dir": "",            # records and logs, below results/
    "output": "",              # the aggregate JSON
}

HOOK_KEYS = envvars.ROW_KEYS


def row_settings(cfg: dict, model: str, ctx: int, chunks: int, row: dict) -> ppl.PplSettings:
    unknown = set(row) - {"name", "cache", *HOOK_KEYS}
    if unknown:
        raise config.ConfigError(f"row {row.get('name')!r}: unknown keys {sorted(unknown)}; "
                                 f"known: name, cache, {', '.join(HOOK_KEYS)}")
    hook_opts = {k: row[k] for k in HOOK_KEYS if k in row}
    hook = envvars.hook_env(evict_every=cfg["evict_every"], **hook_opts) if hook_opts else {}
    cache = row.get("cache", "f16")
    return ppl.PplSettings(model=model, data=paths.relative(paths.WIKITEXT_TEST), ctx=ctx, batch=cfg["evict_every"],
                           chunks=chunks, flash_attn=cfg["flash_attn"], cache_type_k=cache, cache_type_v=cache,
                           threads=cfg["threads"], variant=cfg["variant"], hook=hook)


def entry(model: str, ctx: int, row: dict, rec: dict, base_ppl: float, rec_path: Path) -> dict:
    m = rec["metrics"]
    sk, sv, nominal, bitmap = m["sparsity_k_all"], m["sparsity_v_all"], m["nominal"], m["bitmap"]
    if (sk is None) != (sv is None):
        # one tensor untouched (scale 0, e.g. the k-only preset): the hook reports nothing for it, so the
        # hook's nominal/bitmap cover only the other one. Count the untouched tensor as dense (sparsity 0) and
        # redo both figures over K+V (K and V hold the same number of values in these models).
        sk, sv = sk or 0.0, sv or 0.0
        nnz = (1 - sk) + (1 - sv)
        nominal, bitmap = 2 / nnz, 16 * 2 / (2 + 16 * nnz)
    per_chunk = []
    if m.get("kld"):
        k = logparse.kld_stats((paths.ROOT / rec["log"]).read_text(errors="replace"))
        cols = {"nll": [math.log(c["ppl"]) for c in k.per_chunk], "delta_nll": [c["ln_ratio"] for c in k.per_chunk],
                "kld": [c["kld"] for c in k.per_chunk], "same_top_p_pct": [c["same_top_p"] for c in k.per_chunk]}
        cols = {name: logparse.per_chunk_deltas(v) for name, v in cols.items()}
        per_chunk = [dict(zip(cols, vals)) for vals in zip(*cols.values())]
    return {
        "model": model, "ctx": ctx, "row": row["name"], "cache": rec["settings"]["cache_type_k"],
        "elastickv": rec["elastickv"] if rec["env"].get("ELASTICKV") == "1" else None,
        "chunks": m["chunks_scored"], "tokens_scored": m["chunks_scored"] * logparse.tokens_scored_per_chunk(ctx),
        "ppl": m["ppl"], "ppl_delta_pct": 100.0 * (m["ppl"]["value"] / base_ppl - 1.0),
        "ln_ppl_ratio": m.get("ln_ppl_ratio"), "kld": m.get("kld"), "same_top_p_pct": m.get("same_top_p_pct"),
        "sparsity_k": sk, "sparsity_v": sv,
        "sparsity_k_region": m.get("sparsity_k_region"), "sparsity_v_region": m.get("sparsity_v_region"),
        "nominal": nominal, "bitmap": bitmap, "resident": m["resident"], "kv_mib": m["kv_mib"],
        "hadamard_rotation": m["hadamard_rotation"], "hist": m.get("hist"),
        "per_chunk": per_chunk, "record": paths.relative(rec_path),
    }


def plan(cfg: dict) -> list[tuple[str, int, int]]:
    out = []
    for c in cfg["contexts"]:
        for model in cfg["models"]:
            n = (c.get("chunks") or {}).get(model)
            if n:
                out.append((model, int(c["ctx"]), int(n)))
    return out


def run(cfg: dict, force: bool = False) -> dict:
    """Runs (or resumes) every run of the config and writes the aggregate; returns it."""
    for model in cfg["models"]:
        models.entry(model)  # unknown names fail before anything runs
    todo = plan(cfg)
    if not todo:
        raise config.ConfigError("nothing to run: no model has chunks at any context of the config")
    runs_dir = paths.ROOT / cfg["runs_dir"]
    entries, sources = [], []
    with progress_bar(len(todo) * (len(cfg["rows"]) + 1), f"{cfg['artifact']} runs") as bar:
        for model, ctx, chunks in todo:
            out = runs_dir / f"{model}-c{ctx}-n{chunks}"
            base = row_settings(cfg, model, ctx, chunks, {"name": "baseline", "cache": "f16"})
            base_rec = ppl.run("baseline-base", base, out, kld="base", force=force)
            bar.update()
            recs = {}
            for row in cfg["rows"]:
                recs[row["name"]] = ppl.run(row["name"], row_settings(cfg, model, ctx, chunks, row), out,
                                            kld="compare", force=force)
                bar.update()
            # ΔPPL against the f16 run's own PPL (the `baseline` row, 6 printed decimals; else the base run, 4):
            # "Mean PPL(base)" of a KLD run is computed from the stored base log-probabilities, which llama.cpp
            # keeps in a lossy 16-bit form (it differs by ~0.2 % on the default model)
            base_ppl = (recs["baseline"] if "baseline" in recs else base_rec)["metrics"]["ppl"]["value"]
            for row in cfg["rows"]:
                entries.append(entry(model, ctx, row, recs[row["name"]], base_ppl, out / f"{row['name']}.json"))
                sources.append(out / f"{row['name']}.json")
    notes = ("KLD and top-1 agreement against the f16 baseline's logits of the same chunks (flash attention "
             f"{cfg['flash_attn']}). Sparsity over all cells of each sequence's final cache, sinks included; "
             "*_region: thresholded cells only. nominal = N/nnz, bitmap = 16N/(N+16nnz), resident = f16 bytes / "
             "real KV bytes: zeroing in a dense cache saves no resident memory (ElasticKV rows are 1.00x). "
             "per_chunk values are derived from llama-perplexity's running means (5 printed decimals).")
    agg = results.aggregate(cfg["artifact"], "scripts/eval/ppl_tables.py", cfg, {"entries": entries}, sources, notes)
    results.write_aggregate(paths.ROOT / cfg["output"], agg, force=force)
    return agg


def markdown(agg: dict) -> str:
    lines = ["| model | ctx | row | cache | PPL ± err | ΔPPL | KLD | top-1 % | K/V sparsity | nominal | resident |",
             "|" + "---|" * 11]
    for e in agg["data"]["entries"]:
        kld = f"{e['kld']['value']:.5f}" if e["kld"] else "—"
        top = f"{e['same_top_p_pct']['value']:.2f}" if e["same_top_p_pct"] else "—"
        lines.append(f"| {e['model']} | {e['ctx']} | {e['row']} | {e['cache']} | {e['ppl']['value']:.4f} ± "
                     f"{e['ppl']['stderr']:.4f} | {e['ppl_delta_pct']:+.2f}% | {kld} | {top} | "
                     f"{100 * e['sparsity_k']:.1f}/{100 * e['sparsity_v']:.1f}% | {e['nominal']:.2f}× | {e['resident']:.2f}× |")
    return "\n".join(lines)


def main() -> int:
    args = startup.parse_args(startup.driver_parser(__doc__, "table2_ppl"))
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides)
        agg = run(cfg, force=args.force)
    except startup.driver_errors() as e:
        return startup.fail(__file__, e)
    print(markdown(agg))
    print(f"\nppl_tables: {cfg['output']} written ({len(agg['data']['entries'])} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
