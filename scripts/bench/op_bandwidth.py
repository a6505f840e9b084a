#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Bandwidth of the ElasticKV op alone: one pass of GGML_OP_KV_SPARSIFY over one layer's K or V tensor of a real
model shape, against a copy of the same bytes, both timed by llama.cpp's own test-backend-ops in one run.

test-backend-ops (perf mode, `-p kvbench`) runs the cases of cuda_hook/tree/tests/test-kv-sparsify.inc: for each
(model shape, cells, type, layout, mode) the op and a same-type copy (ggml_cpy) of the bytes the pass must move,
each repeated for at least a second. A pass moves 2 x the bytes of the cells it processes (read, and written back
in place: what a copy of them moves), so

    ratio = op GB/s / copy GB/s = copy time / op time,

1.0 meaning the pass runs at memcpy speed. full: every cell processed; incremental: the 64 newest of the cache.
Targets (issue 12): full pass >= 50 % of memcpy on the CPU, >= 70 % on a GPU; incremental pass of 64 cells
<= 20 us on a GPU at the Llama-3-8B shape (8 KV heads x 128).

The aggregate (results/bench/op_bandwidth_<variant>.json) lists every case with both timings and the ratio, and
per mode the smallest and median ratio against the target; the raw test-backend-ops output (SQL rows) is kept
beside it. test-backend-ops gives the CPU backend half of the hardware threads (both timings use the same).

Examples:
  scripts/bench/op_bandwidth.py
  scripts/bench/op_bandwidth.py --set models=[smollm2-135m] --set cells=[4096] --set output=build/run/op.json
  scripts/bench/op_bandwidth.py --set backend=CUDA0 --set variant=cuda --set output=results/gpu/op_bandwidth.json
"""

from __future__ import annotations

import re
import sqlite3
import statistics
import sys
import time

from elastickv import config, paths, results, startup, tools

SCRIPT = "scripts/bench/op_bandwidth.py"
MODELS = {"llama3-8b": (8, 128), "smollm2-135m": (3, 64), "qwen2.5-0.5b": (2, 64)}  # as in the .inc
CELLS = (4096, 16384, 32768)
TYPES = ("f16", "q8_0", "q4_0")
LAYOUTS = ("rows", "trans")
MODES = ("full", "incremental")
INCREMENTAL_CELLS = 64
DEFAULTS = {
    "artifact": "Op bandwidth",
    "models": list(MODELS),
    "cells": list(CELLS),
    "types": list(TYPES),
    "layouts": list(LAYOUTS),
    "modes": list(MODES),
    "backend": "CPU",
    "variant": "cpu",
    "targets": {"cpu_full_ratio": 0.5, "gpu_full_ratio": 0.7, "gpu_incremental_us_llama3_8b": 20},
    "output": "results/bench/op_bandwidth_cpu.json",
}
# VARS_TO_STR of test_kv_sparsify_perf / test_kv_sparsify_copy
PARAMS = re.compile(r"kvbench=(?P<kind>op|copy),model=(?P<model>[^,]+),type=(?P<type>[^,]+),n_head=(?P<n_head>\d+),"
                    r"head_dim=(?P<head_dim>\d+),n_cells=(?P<n_cells>\d+),n_list=(?P<n_list>\d+),trans=(?P<trans>[01])$")


class BenchError(RuntimeError):
    """A benchmark that cannot run or whose output cannot be read; the message says why."""


def check(cfg: dict) -> None:
    for key, known in (("models", MODELS), ("cells", CELLS), ("types", TYPES), ("layouts", LAYOUTS),
                       ("modes", MODES)):
        vals = cfg[key]
        if not isinstance(vals, list) or not vals or not set(vals) <= set(known):
            raise config.ConfigError(f"{key}: a non-empty list of {', '.join(map(str, known))} (the cases compiled "
                                     f"into test-kv-sparsify.inc), got {vals!r}")
    if "trans" in cfg["layouts"] and cfg["layouts"] == ["trans"] and "f16" not in cfg["types"]:
        raise config.ConfigError("layouts [trans] runs only with type f16 (a transposed V cache is never quantized)")
    if cfg["variant"] not in ("cpu", "cuda"):
        raise config.ConfigError(f"variant: cpu or cuda, got {cfg['variant']!r}")


def params_regex(cfg: dict) -> str:
    """The -p filter of test-backend-ops selecting the configured cases (modes are selected after the run)."""
    alt = lambda xs: "(" + "|".join(re.escape(str(x)) for x in xs) + ")"  # noqa: E731
    trans = alt(["0"] * ("rows" in cfg["layouts"]) + ["1"] * ("trans" in cfg["layouts"]))
    return (f"^kvbench=(op|copy),model={alt(cfg['models'])},type={alt(cfg['types'])},.*,n_cells={alt(cfg['cells'])},"
            f"n_list=[0-9]+,trans={trans}$")


def parse_sql(text: str) -> list[dict]:
    """The rows test-backend-ops printed with --output sql (its CREATE TABLE and INSERT statements), via sqlite3."""
    create = re.search(r"^CREATE TABLE IF NOT EXISTS test_backend_ops \(.*?^\);", text, re.S | re.M)
    inserts = re.findall(r"^INSERT INTO test_backend_ops .*\);$", text, re.M)
    if not create or not inserts:
        raise BenchError("test-backend-ops printed no perf rows (is KV_SPARSIFY built into it? see the log)")
    db = sqlite3.connect(":memory:")
    db.row_factory = sqlite3.Row
    db.executescript(create.group(0) + "\n" + "\n".join(inserts))
    return [dict(r) for r in db.execute("SELECT * FROM test_backend_ops")]


def cases(rows: list[dict], cfg: dict) -> list[dict]:
    """One entry per (model, type, cells, layout, mode): the op and its copy reference side by side."""
    by_key: dict[tuple, dict] = {}
    for r in rows:
        m = PARAMS.match(r["op_params"])
        if m is None or not r["supported"] or not r["passed"]:
            continue
        g = m.groupdict()
        n_cells, n_list = int(g["n_cells"]), int(g["n_list"])
        mode = "full" if n_list == n_cells else "incremental"
        layout = "trans" if g["trans"] == "1" else "rows"
        if mode not in cfg["modes"]:
            continue
        key = (g["model"], g["type"], n_cells, layout, mode)
        e = by_key.setdefault(key, {"model": g["model"], "type": g["type"], "n_head": int(g["n_head"]),
                                    "head_dim": int(g["head_dim"]), "n_cells": n_cells, "n_list": n_list,
                                    "layout": layout, "mode": mode, "backend": r["backend_name"]})
        e[f"{g['kind']}_us"] = float(r["time_us"])
        e[f"{g['kind']}_gb_s"] = float(r["bandwidth_gb_s"])
        e[f"{g['kind']}_kb"] = int(r["memory_kb"])
        e[f"{g['kind']}_runs"] = int(r["n_runs"])
    out = []
    for key in sorted(by_key):
        e = by_key[key]
        if "op_us" not in e or "copy_us" not in e:
            raise BenchError(f"case {key}: test-backend-ops reported the {'copy' if 'op_us' in e else 'op'} only")
        e["ratio"] = e["op_gb_s"] / e["copy_gb_s"]
        out.append(e)
    return out


def summary(entries: list[dict], cfg: dict) -> dict:
    """Per mode: the smallest and median ratio; the full-pass target of this device kind, and whether all meet it."""
    gpu = cfg["variant"] == "cuda"
    target = cfg["targets"]["gpu_full_ratio" if gpu else "cpu_full_ratio"]
    out = {}
    for mode in cfg["modes"]:
        rs = [e["ratio"] for e in entries if e["mode"] == mode]
        if not rs:
            continue
        s = {"cases": len(rs), "ratio_min": min(rs), "ratio_median": statistics.median(rs), "ratio_max": max(rs)}
        if mode == "full":
            s |= {"target_ratio": target, "meets_target": min(rs) >= target,
                  "cases_below_target": sum(r < target for r in rs)}
        else:
            us = [e["op_us"] for e in entries if e["mode"] == mode and e["model"] == "llama3-8b"]
            s["op_us_max_llama3_8b"] = max(us) if us else None
            if gpu and us:
                s |= {"target_us": cfg["targets"]["gpu_incremental_us_llama3_8b"],
                      "meets_target": max(us) <= cfg["targets"]["gpu_incremental_us_llama3_8b"]}
        out[mode] = s
    return out


def run(cfg: dict, force: bool = False) -> dict:
    check(cfg)
    out = paths.ROOT / cfg["output"]
    log = out.with_suffix(".log")
    binary = tools.require_binary(paths.binary("test-backend-ops", variant=cfg["variant"]))
    cmd = [paths.relative(binary), "perf", "-b", cfg["backend"], "-p", params_regex(cfg), "--output", "sql"]
    print(f"op_bandwidth: {' '.join(cmd)} (each case runs for at least a second)", file=sys.stderr)
    t0 = time.time()
    _, text = tools.run(cmd, log)
    entries = cases(parse_sql(text), cfg)
    if not entries:
        raise BenchError(f"no case matched the config; log: {paths.relative(log)}")
    data = {"binary": cmd[0], "wall_s": time.time() - t0, "cases": entries, "summary": summary(entries, cfg)}
    notes = ("ratio = op GB/s / copy GB/s of the same bytes (2 x the processed cells' bytes: read, and written back "
             "in place), both timed by test-backend-ops perf in one run; full: every cell processed, incremental: "
             f"the {INCREMENTAL_CELLS} newest. test-backend-ops gives the CPU backend half of the hardware threads.")
    agg = results.aggregate(cfg["artifact"], SCRIPT, cfg, data, [log], notes)
    results.write_aggregate(out, agg, force=force)
    return agg


def markdown(agg: dict) -> str:
    rows = ["| model | type | layout | cells | mode | op µs | op GB/s | copy GB/s | ratio |", "|" + "---|" * 9]
    for e in agg["data"]["cases"]:
        rows.append(f"| {e['model']} | {e['type']} | {e['layout']} | {e['n_cells']} | {e['mode']} | "
                    f"{e['op_us']:.1f} | {e['op_gb_s']:.2f} | {e['copy_gb_s']:.2f} | {e['ratio']:.2f} |")
    for mode, s in agg["data"]["summary"].items():
        line = f"\n{mode}: ratio min {s['ratio_min']:.2f}, median {s['ratio_median']:.2f} over {s['cases']} cases"
        if "target_ratio" in s:
            line += f" (target >= {s['target_ratio']:.2f}: {'met' if s['meets_target'] else 'not met'})"
        rows.append(line)
    return "\n".join(rows)


def main() -> int:
    args = startup.parse_args(startup.driver_parser(__doc__, "op_bandwidth"))
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides)
        agg = run(cfg, force=args.force)
    except startup.driver_errors(BenchError) as e:
        return startup.fail(__file__, e)
    print(markdown(agg))
    print(f"\nop_bandwidth: {cfg['output']} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
