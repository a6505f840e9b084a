#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The main job (`make run`): ElasticKV against llama.cpp's own KV caches on WikiText-2, in one table.

Rows (all with flash attention on, -b = -ub = EVICT_EVERY, the same chunks of wiki.test.raw):
  baseline    f16 cache, hook off (its logits are the KL-divergence reference)
  sweet       f16 cache, ElasticKV preset sweet (K 0.45 / V 0.50)
  aggressive  f16 cache, ElasticKV preset aggressive (K 0.50 / V 0.50)
  q8_0        llama.cpp's q8_0 K/V cache, hook off
  q4_0        llama.cpp's q4_0 K/V cache, hook off
  streaming         f16 cache, StreamingLLM eviction keeping 25 % of the positions, through the smallest physical
                    cap that holds it (ELASTICKV_KV_CELLS): evicted cells are freed and reused
  streaming+q4_0    the same eviction stacked with llama.cpp's q4_0 K/V cache
  h2o-shared+q8_0   H2O with one keep set per sequence (ELASTICKV_SCOPE=shared), 25 %, capped, q8_0 K/V
Columns: PPL ± error, KL divergence and top-1 agreement against baseline, K and V sparsity (all cells,
sinks included; eviction rows: the fraction of positions evicted), the three compression figures of SPEC.md
§1, and the real KV MiB llama.cpp allocated (its own log). Zeroing entries in a dense cache saves no memory: the
resident figure of ElasticKV rows is 1.00x, and says so; eviction rows save what their smaller buffer saves.

Each row writes <out>/<row>.json (schema: results/SCHEMA.md) and its raw log; the table goes to
<out>/table.json and <out>/table.md. An interrupted run resumes: finished rows are reused.
"""

from __future__ import annotations

import sys
from pathlib import Path

from elastickv import corpora, envvars, hub, logparse, models, paths, ppl, results, startup
from elastickv.progress import bar as progress_bar

#: the eviction rows keep this fraction of the positions, through the smallest cap that holds it
EVICT_BUDGET = "0.25"

ROWS = [
    # name, cache type K/V, hook settings for envvars.hook_env (None: hook off)
    ("baseline", "f16", None),
    ("sweet", "f16", {"preset": "sweet"}),
    ("aggressive", "f16", {"preset": "aggressive"}),
    ("q8_0", "q8_0", None),
    ("q4_0", "q4_0", None),
    ("streaming", "f16", {"policy": "streaming", "budget": EVICT_BUDGET}),
    ("streaming+q4_0", "q4_0", {"policy": "streaming", "budget": EVICT_BUDGET}),
    ("h2o-shared+q8_0", "q8_0", {"policy": "h2o", "scope": "shared", "budget": EVICT_BUDGET}),
]


def hook_text(hook: dict | None, kv_cells: int | None) -> str:
    """The table's ElasticKV column: off, the preset, or the eviction and its cap."""
    if not hook:
        return "off"
    if "preset" in hook:
        return hook["preset"]
    scope = f" ({hook['scope']})" if "scope" in hook else ""
    return f"{hook['policy']}{scope} {100 * float(hook['budget']):g} %, {kv_cells} cells"


def fmt_pm(m: dict | None, scale: float = 1.0, digits: int = 4) -> str:
    if not m or m.get("value") is None:
        return "—"
    return f"{m['value'] * scale + 0.0:.{digits}f} ± {m['stderr'] * scale + 0.0:.{digits}f}"


def table_rows(records: dict[str, dict]) -> list[dict]:
    base_ppl = records["baseline"]["metrics"]["ppl"]["value"]
    rows = []
    for name, ctype, hook in ROWS:
        rec = records[name]
        m = rec["metrics"]
        rows.append({
            "row": name,
            "cache": f"{ctype}/{ctype}",
            "elastickv": hook_text(hook, rec["elastickv"].get("kv_cells")),
            "ppl": m["ppl"],
            "ppl_delta_pct": 100.0 * (m["ppl"]["value"] / base_ppl - 1.0),
            "kld": m["kld"],
            "same_top_p_pct": m["same_top_p_pct"],
            "sparsity_k": m["sparsity_k_all"],
            "sparsity_v": m["sparsity_v_all"],
            "nominal": m["nominal"],
            "bitmap": m.get("bitmap"),  # eviction rows have none
            "resident": m["resident"],
            "real_kv_mib": m["kv_real_mib"],
            "record": f"{name}.json",
        })
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    head = ("| row | cache K/V | ElasticKV | PPL ± err | ΔPPL | KLD ± err | top-1 agree % | K sparsity | V sparsity "
            "| nominal | bitmap | resident | real KV MiB |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        bitmap = f"{r['bitmap']:.2f}×" if r["bitmap"] is not None else "—"
        zeros = r["elastickv"] in ("sweet", "aggressive")
        resident = f"{r['resident']:.2f}×" + (" (dense: zeros saved no memory)" if zeros else "")
        lines.append(
            f"| {r['row']} | {r['cache']} | {r['elastickv']} | {fmt_pm(r['ppl'])} | {r['ppl_delta_pct']:+.2f}% "
            f"| {fmt_pm(r['kld'], digits=5)} | {fmt_pm(r['same_top_p_pct'], digits=2)} | {100 * r['sparsity_k']:.1f}% "
            f"| {100 * r['sparsity_v']:.1f}% | {r['nominal']:.2f}× | {bitmap} | {resident} | {r['real_kv_mib']:.2f} |")
    lines.append("")
    lines.append(f"Model {meta['model']} ({meta['model_sha256'][:12]}), {meta['data']}, c={meta['ctx']}, "
                 f"-b/-ub {meta['batch']}, {meta['chunks']} chunk{'s' if meta['chunks'] != 1 else ''} run, "
                 f"{meta['tokens_scored']} tokens scored (the second half "
                 f"of each chunk), -fa on, {meta['device']}, commit {meta['git'][:10]}, "
                 f"llama.cpp {meta['upstream']}. KLD/top-1 against the baseline's logits. Sparsity over all cells of "
                 f"each sequence's final cache (sinks included). nominal = N/nnz, bitmap = 16N/(N+16nnz), "
                 f"resident = f16 bytes of a full-context cache / real KV bytes, and real KV MiB, both from llama.cpp's "
                 f"own log. Eviction rows free the evicted cells into a cache of that many cells (ELASTICKV_KV_CELLS); "
                 f"their sparsity is the fraction of positions evicted.")
    return "\n".join(lines)


def main() -> int:
    ap = startup.driver_parser(__doc__)
    ap.add_argument("--model", default=None, help="model name from configs/models.yaml (default: its default)")
    ap.add_argument("--chunks", type=int, default=10, help="512-token chunks of wiki.test.raw (default: %(default)s)")
    ap.add_argument("--full", action="store_true", help="all chunks of wiki.test.raw (hours on 2 CPU cores)")
    ap.add_argument("--ctx", type=int, default=512, help="context size -c (default: %(default)s)")
    ap.add_argument("--evict-every", type=int, default=64, help="ELASTICKV_EVICT_EVERY, also -b and -ub (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="-t (default: %(default)s)")
    ap.add_argument("--variant", choices=["cpu", "cuda"], default="cpu", help="which build to run (default: %(default)s)")
    ap.add_argument("--wikitext", choices=["shipped", "hub"], default="shipped",
                    help="WikiText-2 test: the copy shipped in data/wikitext-2-raw (default), or the hub's "
                         "(Salesforce/wikitext through the datasets library; needs the hub or its cache)")
    ap.add_argument("--out", type=Path, default=paths.BUILD / "run" / "quickstart",
                    help="output folder (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="redo rows whose records exist with other settings")
    args = startup.parse_args(ap)
    if args.chunks < 1:
        ap.error("--chunks must be at least 1")
    if args.ctx < 256 or args.ctx % args.evict_every:
        ap.error("--ctx must be at least 256 and a multiple of --evict-every")

    model = args.model or models.load()["default"]
    chunks = None if args.full else args.chunks
    out = args.out if args.full or args.out != paths.BUILD / "run" / "quickstart" else \
        args.out / f"{model}-c{args.ctx}-n{args.chunks}"
    try:
        models.entry(model)  # an unknown name fails before anything runs
        data = paths.relative(corpora.wikitext_test(args.wikitext))
    except startup.driver_errors(corpora.CorpusError, hub.HubError) as e:
        return startup.fail(__file__, e)

    def settings(ctype: str, hook_settings: dict | None) -> ppl.PplSettings:
        hook = {}
        if hook_settings:
            extra = {}
            if "policy" in hook_settings:  # eviction: the smallest physical cap that holds the budget
                extra["kv_cells"] = envvars.min_kv_cells(hook_settings["budget"], args.ctx, args.evict_every,
                                                         args.evict_every)
            hook = envvars.hook_env(**hook_settings, **extra, evict_every=args.evict_every)
        return ppl.PplSettings(model=model, data=data, ctx=args.ctx, batch=args.evict_every, chunks=chunks,
                               cache_type_k=ctype, cache_type_v=ctype, threads=args.threads, variant=args.variant,
                               hook=hook)

    records: dict[str, dict] = {}
    try:
        with progress_bar(len(ROWS) + 1, "quickstart runs") as bar:
            ppl.run("baseline-base", settings("f16", None), out, kld="base", force=args.force)
            bar.update()
            for name, ctype, hook in ROWS:
                records[name] = ppl.run(name, settings(ctype, hook), out, kld="compare", force=args.force)
                bar.update()
    except startup.driver_errors() as e:
        return startup.fail(__file__, e)

    b = records["baseline"]
    # the chunks llama-perplexity ran (its own count) and the tokens it scored in them; every row ran the same
    chunks_run = {name: logparse.chunks_run((paths.ROOT / r["log"]).read_text())[0] for name, r in records.items()}
    scored = {name: r["metrics"]["chunks_scored"] for name, r in records.items()}
    if len(set(chunks_run.values()) | set(scored.values())) != 1:
        print(f"quickstart: the rows ran or scored different chunk counts (run {chunks_run}, scored {scored})",
              file=sys.stderr)
        return 1
    n_chunks = scored["baseline"]
    meta = {"model": model, "model_sha256": b["model"]["sha256"], "data": data, "ctx": args.ctx,
            "batch": args.evict_every, "chunks": n_chunks,
            "tokens_scored": n_chunks * logparse.tokens_scored_per_chunk(args.ctx),
            "device": b["device"]["gpu"] or b["device"]["cpu"], "git": b["git"]["commit"],
            "upstream": b["upstream"]["commit"]}
    rows = table_rows(records)
    md = markdown(rows, meta)
    results.write_json_atomic(out / "table.json", {"meta": meta, "rows": rows})
    (out / "table.md").write_text(md + "\n")
    print(md)
    print(f"\nquickstart: records, logs and table in {paths.relative(out)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
