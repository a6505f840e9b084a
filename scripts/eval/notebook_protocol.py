#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The kv-cache-compression notebook's protocol, re-run properly in llama.cpp (Table 21, Figure 13).

The notebook (../shared/notes/kv-cache-compression-policies.md) measured sliding window, LRU, H2O, semantic
clustering and a learned policy at budgets of 256-2,048 cells on 2,048-token texts. Here every system runs in
the hook, on text long enough that each budget really evicts (the tokens evicted are reported per run):

* per panel (document type, context, chunks): the f16 base (hook off) saves its logits; every row of the
  config (a named ELASTICKV_* setting: policy, H2O heavy/recent split, semantic K, ...) runs at each budget B
  (ELASTICKV_BUDGET = B cells per sequence, layer and KV head) on the same chunks, -b = -ub = EVICT_EVERY,
  flash attention off, and is compared to the base (KLD, PPL, top-1 agreement);
* a row whose evictions free their cells (envvars.frees_all: sliding_window, streaming, lru_fifo, random_tokens)
  runs under the physical cap ELASTICKV_KV_CELLS = envvars.min_kv_cells, so its real KV bytes shrink; the others
  keep the dense buffer. Real bytes are llama.cpp's own KV size line of each run (kv_real_mib), never a budget;
* eviction cost twice: the hook's own time per pass (evict_pass "ms" of ELASTICKV_STATS) against the run's
  prompt-eval time (the notebook's "eviction time / forward time"), and the decode overhead from llama-bench
  (hook off and the bench rows at one budget and depth, interleaved in rotating order, rounds as configured).

Document types (scripts/elastickv/corpora.py): narrative = WikiText-2 test; code = ten CPython 3.11.7 modules
(data/python-stdlib); qa = the routing suite's synthetic question-answer items in Paul Graham essay filler.

Every run writes a record and its raw log under ``runs_dir``; an interrupted sweep resumes (finished runs are
reused, never redone; --force replaces runs made with other settings). The aggregate is written after every
panel, listing the runs still pending; --collect writes it from the finished runs only, running nothing.

Examples:
  scripts/eval/notebook_protocol.py
  scripts/eval/notebook_protocol.py --collect
  scripts/eval/notebook_protocol.py --set 'panels=[{document: code, ctx: 1024, chunks: 1, budgets: [256]}]' \\
      --set rows_default=[h2o-80-20] --set bench=null

Exit status: 0 done, 1 an error (one line on stderr), 2 bad arguments.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import decode_overhead  # noqa: E402
from elastickv import config, corpora, envvars, models, paths, ppl, results, startup, tools
from elastickv.progress import bar as progress_bar

DEFAULTS = {
    "artifact": "Table 21",
    "model": "smollm2-135m",
    "evict_every": 64,
    "warm": 128,
    "sink": 0,
    "flash_attn": "off",
    "threads": 2,
    "variant": "cpu",
    "qa": {},
    "rows": {},
    "rows_default": [],
    "panels": [],
    "bench": None,
    "runs_dir": "",
    "output": "",
}
PANEL_KEYS = {"document", "ctx", "chunks", "budgets", "rows"}
BENCH_KEYS = {"depth", "n_gen", "budget", "rounds", "rows"}


def row_env(cfg: dict, row: str, budget: int, ctx: int) -> tuple[dict[str, str], int | None]:
    """The ELASTICKV_* variables of ``row`` at ``budget`` cells (validated), and the physical cap when its
    evictions free their cells (None otherwise)."""
    settings = {"evict_every": cfg["evict_every"], "warm": cfg["warm"]}
    if cfg["rows"][row].get("policy") not in envvars.NO_SINK_POLICIES:  # sliding_window refuses a SINK
        settings["sink"] = cfg["sink"]
    settings |= dict(cfg["rows"][row]) | {"budget": str(int(budget))}
    env = envvars.hook_env(**settings)
    cap = None
    if envvars.frees_all(envvars.resolve(env)):
        cap = envvars.min_kv_cells(str(int(budget)), ctx, cfg["evict_every"], cfg["evict_every"], cfg["warm"])
        if cap < ctx:
            env = envvars.hook_env(**settings, kv_cells=cap)
        else:
            cap = None
    return env, cap


def check(cfg: dict) -> None:
    models.entry(cfg["model"])
    if not cfg["rows"]:
        raise config.ConfigError("rows is empty: name the ELASTICKV_* settings of each row")
    for name, row in cfg["rows"].items():
        if not isinstance(row, dict) or "policy" not in row or "budget" in row:
            raise config.ConfigError(f"row {name}: give its ELASTICKV_* settings with a policy and without budget "
                                     "(the panels give the budgets)")
        row_env(cfg, name, 256, 2048)  # the variables are valid
    for name in cfg["rows_default"]:
        if name not in cfg["rows"]:
            raise config.ConfigError(f"rows_default names {name!r}, not a row; rows: {', '.join(cfg['rows'])}")
    if not cfg["panels"]:
        raise config.ConfigError("panels is empty: e.g. panels=[{document: narrative, ctx: 2048, chunks: 1, budgets: [256]}]")
    for p in cfg["panels"]:
        if set(p) - PANEL_KEYS or not {"document", "ctx", "chunks", "budgets"} <= set(p):
            raise config.ConfigError(f"panel {p}: keys are {', '.join(sorted(PANEL_KEYS))} (rows optional)")
        if p["document"] not in corpora.CORPORA:
            raise config.ConfigError(f"panel document {p['document']!r}; known: {', '.join(corpora.CORPORA)}")
        for r in p.get("rows") or []:
            if r not in cfg["rows"]:
                raise config.ConfigError(f"panel {p['document']} names row {r!r}; rows: {', '.join(cfg['rows'])}")
        for b in p["budgets"]:
            if not (isinstance(b, int) and 1 <= b and b + cfg["evict_every"] < p["ctx"]):
                raise config.ConfigError(f"panel {p['document']} c{p['ctx']}: budget {b} must be a whole number of "
                                         f"cells below the context less EVICT_EVERY ({p['ctx'] - cfg['evict_every']}), "
                                         "or it would never evict")
    b = cfg["bench"]
    if b is not None and (set(b) != BENCH_KEYS or any(r not in cfg["rows"] for r in b["rows"])):
        raise config.ConfigError(f"bench needs exactly {', '.join(sorted(BENCH_KEYS))}, with rows from rows")


def panel_rows(cfg: dict, p: dict) -> list[str]:
    return list(p.get("rows") or cfg["rows_default"] or cfg["rows"])


def panel_dir(cfg: dict, p: dict) -> Path:
    return paths.ROOT / cfg["runs_dir"] / f"{cfg['model']}-{p['document']}-c{p['ctx']}-n{p['chunks']}"


def bench_path(cfg: dict) -> Path:
    b = cfg["bench"]
    return paths.ROOT / cfg["runs_dir"] / f"{cfg['model']}-bench-d{b['depth']}-b{b['budget']}.json"


def settings(cfg: dict, p: dict, data: Path, hook: dict) -> ppl.PplSettings:
    """The perplexity run of panel ``p`` on its document's text file ``data`` (corpora.path) with ``hook``."""
    return ppl.PplSettings(model=cfg["model"], data=paths.relative(data), ctx=p["ctx"], batch=cfg["evict_every"],
                           chunks=int(p["chunks"]), flash_attn=cfg["flash_attn"], threads=cfg["threads"],
                           variant=cfg["variant"], hook=hook)


def eval_ms(rec: dict) -> float | None:
    """The prompt-eval time of a run's llama-perplexity log (llama_perf_context_print), i.e. the forward passes;
    the log as the record names it (archived xz-compressed: tools.open_text reads either)."""
    with tools.open_text(paths.ROOT / rec["log"], errors="replace") as f:
        m = re.findall(r"prompt eval time =\s*([0-9.]+) ms", f.read())
    return float(m[-1]) if m else None


def entry(cfg: dict, p: dict, row: str, budget: int, cap: int | None, rec: dict, rec_path: Path) -> dict:
    m = rec["metrics"]
    fwd = eval_ms(rec)
    evicted = m.get("evicted_tokens_per_chunk") or [0.0]
    return {
        "document": p["document"], "ctx": p["ctx"], "chunks": p["chunks"], "row": row, "budget": budget,
        "policy": rec["elastickv"]["policy"], "settings": cfg["rows"][row], "kv_cells_cap": cap,
        "kept_cells": m["kept_cells"], "evicted_tokens_per_chunk": evicted, "evicted_tokens_min": min(evicted),
        "ppl": m["ppl"], "ppl_base": m["ppl_base"], "kld": m["kld"], "same_top_p_pct": m["same_top_p_pct"],
        "kv_real_mib": m["kv_real_mib"], "kv_cells": m["kv_cells"], "resident": m["resident"],
        "pass_ms_mean": m.get("pass_ms_mean"), "pass_ms_total": m.get("pass_ms_total"),
        "evict_passes": m.get("evict_passes"), "eval_ms": fwd,
        "evict_overhead_pct": 100 * m["pass_ms_total"] / fwd if fwd and m.get("pass_ms_total") is not None else None,
        "record": paths.relative(rec_path),
    }


def run_panels(cfg: dict, force: bool, collect: bool, bar) -> tuple[list, dict, list, list]:
    entries, baselines, sources, pending = [], {}, [], []
    for p in cfg["panels"]:
        out = panel_dir(cfg, p)
        key = f"{p['document']}-c{p['ctx']}"
        base_path = out / "base.json"
        if collect and not base_path.exists():
            pending += [paths.relative(out / f"{n}.json") for n in
                        ["base"] + [f"{r}-b{b}" for b in p["budgets"] for r in panel_rows(cfg, p)]]
            continue
        data = corpora.path(p["document"], cfg["qa"])  # made (or checked) once per panel
        base = ppl.run("base", settings(cfg, p, data, {}), out, kld="base", force=force) if not collect else \
            json.loads(base_path.read_text())
        bar.update()
        baselines[key] = {"document": p["document"], "ctx": p["ctx"], "chunks": p["chunks"],
                          "ppl": base["metrics"]["ppl"], "kv_real_mib": base["metrics"]["kv_real_mib"],
                          "eval_ms": eval_ms(base), "data": base["data"],
                          "record": paths.relative(base_path)}
        sources.append(base_path)
        for budget in p["budgets"]:
            for row in panel_rows(cfg, p):
                name = f"{row}-b{budget}"
                hook, cap = row_env(cfg, row, budget, p["ctx"])
                rec_path = out / f"{name}.json"
                if collect:
                    if not rec_path.exists():
                        pending.append(paths.relative(rec_path))
                        continue
                    rec = json.loads(rec_path.read_text())
                else:
                    rec = ppl.run(name, settings(cfg, p, data, hook), out, kld="compare", force=force)
                entries.append(entry(cfg, p, row, budget, cap, rec, rec_path))
                sources.append(rec_path)
                bar.update()
    return entries, baselines, sources, pending


def run_bench(cfg: dict, force: bool, collect: bool, bar) -> dict | None:
    """llama-bench decode, hook off and each bench row, interleaved (decode_overhead.bench_once), at the bench depth."""
    b = cfg["bench"]
    if b is None:
        return None
    out = bench_path(cfg)
    if out.exists() and not force:
        return json.loads(out.read_text())
    if collect:
        return None
    variants = {"off": {}} | {r: row_env(cfg, r, b["budget"], b["depth"] + b["n_gen"])[0] for r in b["rows"]}
    binary = tools.require_binary(paths.binary("llama-bench", variant=cfg["variant"]))
    model = models.fetch(cfg["model"])
    log_dir = out.with_suffix("")
    log_dir.mkdir(parents=True, exist_ok=True)
    order, runs, started = list(variants), [], results.now()
    flags = ["-b", str(cfg["evict_every"]), "-ub", str(cfg["evict_every"])]
    for rnd in range(b["rounds"]):
        for variant in order[rnd % len(order):] + order[:rnd % len(order)]:
            r = decode_overhead.bench_once(binary, model, b["depth"], b["n_gen"], cfg["threads"], variant, "",
                                           log_dir / f"r{rnd}_{variant}.jsonl.log", flags, variants,
                                           flash_attn="0" if cfg["flash_attn"] == "off" else "1")
            r["round"] = rnd
            runs.append(r)
            bar.update()
    summary = decode_overhead.summarize(runs, [b["depth"]])[str(b["depth"])]
    record = results.record("bench", out.stem, started, ["python3", *sys.argv], {}, envvars.resolve(variants[b["rows"][0]]),
                            {"depths": [b["depth"]], "n_gen": b["n_gen"], "rounds": b["rounds"], "threads": cfg["threads"],
                             "preset": None, "variant": cfg["variant"], "flash_attn": cfg["flash_attn"] == "on",
                             "bench_args": flags, "variants": variants, "budget": b["budget"]},
                            cfg["variant"], paths.relative(binary), cfg["model"], None,
                            {"overhead": {str(b["depth"]): summary}, "runs": runs}, log_dir)
    results.write_json_atomic(out, record)
    return record


def run(cfg: dict, force: bool = False, collect: bool = False) -> dict:
    check(cfg)
    n = sum(1 + len(p["budgets"]) * len(panel_rows(cfg, p)) for p in cfg["panels"])
    nb = 0 if cfg["bench"] is None else cfg["bench"]["rounds"] * (1 + len(cfg["bench"]["rows"]))
    with progress_bar(n + nb, f"{cfg['artifact']} runs") as bar:
        entries, baselines, sources, pending = run_panels(cfg, force, collect, bar)
        bench = run_bench(cfg, force, collect, bar)
    bench_out = None
    if bench is not None:
        depth = str(cfg["bench"]["depth"])
        bench_out = {"depth": cfg["bench"]["depth"], "budget": cfg["bench"]["budget"], "n_gen": cfg["bench"]["n_gen"],
                     "rounds": cfg["bench"]["rounds"], "ns_per_token_off": bench["metrics"]["overhead"][depth]["ns_per_token_off"],
                     "overhead": {r: bench["metrics"]["overhead"][depth][r] for r in cfg["bench"]["rows"]},
                     "record": paths.relative(bench_path(cfg))}
    notes = ("KLD, PPL and top-1 against the f16 base of the same panel (hook off), flash attention "
             f"{cfg['flash_attn']}, -b = -ub = EVICT_EVERY = {cfg['evict_every']}, WARM {cfg['warm']}, sink "
             f"{cfg['sink']} unless a row sets one. budget: cells kept per sequence, layer and KV head. "
             "evicted_tokens_per_chunk: logical length - kept cells at the last pass of each chunk (mean over layers "
             "and KV heads). kv_real_mib: the KV size of llama.cpp's log; rows whose evictions free cells run under "
             "the smallest physical cap the hook accepts (kv_cells_cap), the others keep the dense buffer. "
             "pass_ms_*: the hook's own time per eviction pass; evict_overhead_pct = total pass time / prompt-eval "
             "time of the same run. bench: llama-bench decode time per token against the hook off, interleaved.")
    data = {"entries": entries, "baselines": baselines, "bench": bench_out, "pending": pending}
    agg = results.aggregate(cfg["artifact"], "scripts/eval/notebook_protocol.py", cfg, data, sources, notes)
    results.write_aggregate(paths.ROOT / cfg["output"], agg, force=force)
    return agg


def markdown(agg: dict) -> str:
    lines = ["| document | ctx | budget | row | evicted/chunk | KLD | ΔPPL | KV MiB | ms/pass |", "|" + "---|" * 9]
    for e in agg["data"]["entries"]:
        ms = "" if e["pass_ms_mean"] is None else f"{e['pass_ms_mean']:.2f}"
        lines.append(f"| {e['document']} | {e['ctx']} | {e['budget']} | {e['row']} | {e['evicted_tokens_min']:.0f} | "
                     f"{e['kld']['value']:.4f} | {100 * (e['ppl']['value'] / e['ppl_base']['value'] - 1):+.1f}% | "
                     f"{e['kv_real_mib']:.1f} | {ms} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = startup.driver_parser(__doc__, "table21_notebook_protocol")
    ap.add_argument("--collect", action="store_true", help="write the aggregate from the finished runs, run nothing")
    args = startup.parse_args(ap, argv)
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides)
        agg = run(cfg, force=args.force, collect=args.collect)
    except startup.driver_errors(corpora.CorpusError, ValueError) as e:
        return startup.fail(__file__, e)
    print(markdown(agg))
    print(f"\nnotebook_protocol: {cfg['output']} written ({len(agg['data']['entries'])} rows, "
          f"{len(agg['data']['pending'])} pending)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
