#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Table 6: throughput and decode overhead of the ElasticKV pass, with llama-bench ``-o jsonl``.

Variants (config ``variants``): the hook off, and the hook on in full or incremental mode at each
EVICT_EVERY of the sweep. They are measured interleaved in one run: each round runs every variant once,
in a rotating order, so that slow drifts of a shared machine hit every variant alike. The overhead of a
variant is t_variant / t_off - 1 within a round (decode: ``-p 0 -n N -d DEPTH``, time per generated token;
prefill: ``-p P -n 0``, time per prompt token), reported as mean, standard deviation, min and max over
rounds. Ratios from the same run are the only numbers compared; absolute tokens/s are printed for context.

Every llama-bench call keeps its raw output under ``runs_dir``; a finished call is not redone when an
interrupted run is restarted. Results made with other settings are refused without ``--force``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pandas as pd

from elastickv import config, envvars, models, paths, pypi, results, startup, tools
from elastickv.progress import bar as progress_bar

DEFAULTS = {
    "artifact": "Table 6",
    "model": "smollm2-135m",
    "depths": [4096],          # decode: context depth -d before the generated tokens
    "n_gen": 128,              # decode: generated tokens per measurement
    "prefill": [],             # prefill: prompt lengths -p (measured at depth 0)
    "ubatch": 512,             # -ub of prefill measurements (a pass runs at the end of each ubatch)
    "rounds": 3,
    "threads": 2,
    "preset": "sweet",
    "variants": [],            # [{name, hook: bool, mode, evict_every}]
    "variant": "cpu",          # build: cpu or cuda
    "bench_args": [],          # extra llama-bench arguments, e.g. [-ngl, "99"] on a GPU
    "runs_dir": "results/throughput/runs",
    "output": "results/throughput/throughput.json",
}


def hook_of(v: dict, preset: str) -> dict:
    if not v.get("hook", True):
        return {}
    return envvars.hook_env(preset=preset, mode=v.get("mode", "full"), evict_every=v.get("evict_every", 64))


def measurements(cfg: dict) -> list[tuple[str, int]]:
    """(kind, size): ("decode", depth) and ("prefill", prompt length)."""
    return [("decode", d) for d in cfg["depths"]] + [("prefill", p) for p in cfg["prefill"]]


def bench_cmd(cfg: dict, binary: Path, model: Path, kind: str, size: int) -> list[str]:
    cmd = [paths.relative(binary), "-m", paths.relative(model), "-r", "1", "--no-warmup", "-fa", "1",
           "-t", str(cfg["threads"]), "-o", "jsonl"]
    if kind == "decode":
        cmd += ["-p", "0", "-n", str(cfg["n_gen"]), "-d", str(size)]
    else:
        cmd += ["-p", str(size), "-n", "0", "-ub", str(cfg["ubatch"])]
    return cmd + [str(a) for a in cfg["bench_args"]]


def bench_rows(text: str) -> list[dict]:
    """The rows of a llama-bench ``-o jsonl`` log: its lines that start with ``{``, parsed as JSON."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def run_one(cfg: dict, binary: Path, model: Path, kind: str, size: int, rnd: int, v: dict, runs_dir: Path,
            force: bool) -> dict:
    """One llama-bench call (or its saved result: resume)."""
    stem = f"{kind}{size}_r{rnd}_{v['name']}"
    saved = runs_dir / f"{stem}.json"
    hook = hook_of(v, cfg["preset"])
    cmd = bench_cmd(cfg, binary, model, kind, size)
    if saved.exists():
        old = json.loads(saved.read_text())
        if old["command"] == cmd and old["env"] == hook:
            return old
        if not force:
            raise results.ResultExists(f"{paths.relative(saved)} was measured with other settings; use --force")
    log = runs_dir / f"{stem}.log"
    _, text = tools.run(cmd, log, hook)
    rows = bench_rows(text)
    if len(rows) != 1:
        raise tools.ToolError(f"expected one llama-bench row in {paths.relative(log)}, got {len(rows)}")
    out = {"kind": kind, "size": size, "round": rnd, "variant": v["name"], "env": hook, "command": cmd,
           "row": rows[0], "log": paths.relative(log)}
    results.write_json_atomic(saved, out)
    return out


def ns_per_token(r: dict) -> float:
    row = r["row"]
    return row["avg_ns"] / (row["n_gen"] if r["kind"] == "decode" else row["n_prompt"])


def summarize(runs: list[dict], cfg: dict) -> list[dict]:
    """Per measurement and variant: tokens/s (mean over rounds) and the overhead t_variant / t_off - 1 of each round
    that measured both, in percent (mean, std, min, max)."""
    df = pd.DataFrame({"kind": r["kind"], "size": r["size"], "round": r["round"], "variant": r["variant"],
                       "ns": ns_per_token(r)} for r in runs)
    out = []
    for kind, size in measurements(cfg):
        # time per token, a row per round and a column per variant
        t = df[(df["kind"] == kind) & (df["size"] == size)].pivot(index="round", columns="variant", values="ns")
        for v in cfg["variants"]:
            name = v["name"]
            over = (t[name] / t["off"] - 1.0).dropna().tolist()
            out.append({
                "kind": kind, "size": size, "variant": name, "hook": v.get("hook", True),
                "mode": v.get("mode") if v.get("hook", True) else None,
                "evict_every": v.get("evict_every") if v.get("hook", True) else None,
                "tokens_per_s": statistics.fmean(1e9 / x for x in t[name].dropna()),
                "overhead_pct": {"mean": 100 * statistics.fmean(over),
                                 "std": 100 * statistics.stdev(over) if len(over) > 1 else None,
                                 "min": 100 * min(over), "max": 100 * max(over), "rounds": len(over)},
            })
    return out


def run(cfg: dict, force: bool = False) -> dict:
    names = [v["name"] for v in cfg["variants"]]
    if "off" not in names:
        raise config.ConfigError("variants must include one named 'off' (the hook off): overheads are ratios to it")
    model = models.fetch(cfg["model"])
    binary = tools.require_binary(paths.binary("llama-bench", variant=cfg["variant"]))
    runs_dir = paths.ROOT / cfg["runs_dir"]
    runs_dir.mkdir(parents=True, exist_ok=True)
    todo = measurements(cfg)
    runs = []
    with progress_bar(len(todo) * cfg["rounds"] * len(names), "llama-bench runs") as bar:
        for kind, size in todo:
            for rnd in range(cfg["rounds"]):
                k = rnd % len(names)
                for v in cfg["variants"][k:] + cfg["variants"][:k]:
                    runs.append(run_one(cfg, binary, model, kind, size, rnd, v, runs_dir, force))
                    bar.update()
    notes = (f"llama-bench on {results.device_info()['gpu'] or results.device_info()['cpu']} "
             f"({results.device_info()['n_cpu']} threads available, -t {cfg['threads']}), model {cfg['model']}, "
             f"-fa 1, preset {cfg['preset']}. overhead_pct = t_variant/t_off - 1 per round (decode: per generated "
             "token at depth d; prefill: per prompt token at depth 0), mean/std/min/max over rounds. A shared "
             "machine is noisy: compare ratios only, and read the spread.")
    data = {"rows": summarize(runs, cfg), "runs": runs}
    agg = results.aggregate(cfg["artifact"], "scripts/eval/throughput_tables.py", cfg, data,
                            [r["log"] for r in runs], notes)
    results.write_aggregate(paths.ROOT / cfg["output"], agg, force=force)
    return agg


def main(argv: list[str] | None = None) -> int:
    args = startup.parse_args(startup.driver_parser(__doc__, "table6_throughput"), argv)
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides)
        agg = run(cfg, force=args.force)
    except startup.driver_errors(pypi.FetchError) as e:
        return startup.fail(__file__, e)
    print("| measurement | variant | tokens/s | overhead % (mean ± std, min..max) |\n|---|---|---|---|")
    for r in agg["data"]["rows"]:
        o = r["overhead_pct"]
        std = f" ± {o['std']:.2f}" if o["std"] is not None else ""
        print(f"| {r['kind']} {r['size']} | {r['variant']} | {r['tokens_per_s']:.1f} | {o['mean']:+.2f}{std} "
              f"({o['min']:+.2f}..{o['max']:+.2f}) |")
    print(f"\nthroughput: {cfg['output']} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
