#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""llama-server under load with the hook off and on (issue 13, item 4), on loopback only, bounded in count and time.

One run, two servers started one after the other with the same arguments (SLOTS slots, one KV stream per slot):

1. hook off: every distinct request is sent alone (the reference answers), then all REQUESTS are sent by CLIENTS
   concurrent clients; every concurrent answer must equal the answer to the same request sent alone;
2. hook on (ELASTICKV=1, its stats file kept): the same REQUESTS by the same CLIENTS; no error response, no crash,
   each slot's passes are its own (the stats file's sequence ids against /slots), and the server's peak RSS after
   the last request is within RSS_TOLERANCE of its peak after request RSS_AT.

Requests are greedy and of mixed lengths, drawn (seeded) from WikiText-2 test: some prompts longer than WARM, so
the hook's passes run in the middle of requests. Requests/s and latencies of both phases come from the same run.
The aggregate (results/bench/server_load.json by default; schemas/data.server_load.schema.json) keeps every answer's
status, slot and latency, and the servers' logs beside it.

  scripts/bench/server_load.py                         # the full run (200 requests, 16 clients, 4 slots)
  scripts/bench/server_load.py --set requests=24 --set clients=8 --set output=...   # a small one
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from elastickv import config, envvars, models, paths, results, server, startup, tools
from elastickv import stats as statsfile
from elastickv.progress import bar as progress_bar  # noqa: E402

SCRIPT = "scripts/bench/server_load.py"
DEFAULTS = {
    "artifact": "Server load",
    "model": None,            # configs/models.yaml name; None: the default model
    "slots": 4,
    "clients": 16,
    "requests": 200,
    "distinct": 50,           # distinct requests; each is sent requests/distinct times or so
    "seed": 1,
    "prompt_chars": [200, 600, 1600],  # mixed prompt lengths (about 50, 150, 400 tokens with the default model)
    "n_predict": [8, 32, 64],
    "ctx_per_slot": 1024,
    "threads": 2,
    "extra_args": ["-fa", "off"],  # more llama-server arguments (both phases)
    "hook_env": {"ELASTICKV": "1"},   # the hook-on phase (defaults: WARM 128, EVICT_EVERY 64, the ElasticKV pass)
    "rss_at": 20,
    "rss_tolerance": 0.05,
    "timeout_s": 3600,        # the whole run; each request is bounded by it too
    "output": "results/bench/server_load.json",
}


class LoadError(RuntimeError):
    """The load test cannot run; the message says why."""


def check(cfg: dict) -> None:
    for key in ("slots", "clients", "requests", "distinct", "ctx_per_slot", "threads", "rss_at"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise config.ConfigError(f"{key}: a whole number >= 1, got {cfg[key]!r}")
    if cfg["distinct"] > cfg["requests"]:
        raise config.ConfigError(f"distinct ({cfg['distinct']}) cannot exceed requests ({cfg['requests']})")
    if cfg["rss_at"] >= cfg["requests"]:
        raise config.ConfigError(f"rss_at ({cfg['rss_at']}) must be below requests ({cfg['requests']})")
    if not isinstance(cfg["extra_args"], list) or not all(isinstance(a, str) for a in cfg["extra_args"]):
        raise config.ConfigError(f"extra_args: a list of llama-server arguments (strings), got {cfg['extra_args']!r}")
    for key in ("prompt_chars", "n_predict"):
        if not isinstance(cfg[key], list) or not cfg[key] or not all(isinstance(x, int) and x > 0 for x in cfg[key]):
            raise config.ConfigError(f"{key}: a non-empty list of whole numbers > 0, got {cfg[key]!r}")
    if not isinstance(cfg["hook_env"], dict) or cfg["hook_env"].get("ELASTICKV") != "1":
        raise config.ConfigError("hook_env: the ELASTICKV_* variables of the hook-on phase, with ELASTICKV: '1'")
    try:
        envvars.resolve({k: str(v) for k, v in cfg["hook_env"].items()})  # a bad value fails here, naming it
    except envvars.EnvError as e:
        raise config.ConfigError(f"hook_env: {e}") from None


def make_requests(cfg: dict) -> list[dict]:
    """``requests`` request bodies, ``distinct`` of them different, in a seeded order."""
    text = paths.WIKITEXT_TEST.read_text()
    rng = random.Random(cfg["seed"])
    distinct = []
    for i in range(cfg["distinct"]):
        n = cfg["prompt_chars"][i % len(cfg["prompt_chars"])]
        start = rng.randrange(0, len(text) - n)
        distinct.append({"prompt": text[start:start + n], "n_predict": cfg["n_predict"][i % len(cfg["n_predict"])],
                         "temperature": 0, "cache_prompt": True})
    order = [i % cfg["distinct"] for i in range(cfg["requests"])]
    rng.shuffle(order)
    return [{"distinct": d, "body": distinct[d]} for d in order]


def server_args(cfg: dict) -> list[str]:
    return ["-c", str(cfg["ctx_per_slot"] * cfg["slots"]), "-np", str(cfg["slots"]), "--no-kv-unified",
            "--metrics", "--cache-ram", "0", *cfg["extra_args"]]


def concurrent(srv: server.Server, reqs: list[dict], cfg: dict, label: str) -> dict:
    """Sends every request with ``clients`` threads; returns per-request outcomes, throughput and RSS samples."""
    out: list[dict | None] = [None] * len(reqs)
    done = 0
    lock = threading.Lock()
    rss_at: dict[str, int] = {}
    deadline = time.monotonic() + cfg["timeout_s"]

    def one(i: int) -> None:
        nonlocal done
        t0 = time.monotonic()
        try:
            status, ans = srv.request("POST", "/completion", reqs[i]["body"],
                                      timeout=max(1.0, deadline - time.monotonic()))
        except OSError as e:
            status, ans = 0, {"error": str(e)}
        dt = time.monotonic() - t0
        ok = status == 200 and isinstance(ans, dict) and "content" in ans
        rec = {"i": i, "distinct": reqs[i]["distinct"], "status": status, "latency_s": dt,
               "slot": ans.get("id_slot") if ok else None, "content": ans.get("content") if ok else None,
               "tokens_evaluated": ans.get("tokens_evaluated") if ok else None,
               "tokens_predicted": ans.get("tokens_predicted") if ok else None,
               "error": None if ok else str(ans)[:300]}
        with lock:
            out[i] = rec
            done += 1
            if srv.alive() and done in (cfg["rss_at"], len(reqs)):
                rss_at[str(done)] = srv.rss_kib()[1]
            bar.update()

    with progress_bar(len(reqs), f"{label}: requests") as bar:
        t0 = time.monotonic()
        with ThreadPoolExecutor(cfg["clients"]) as pool:
            list(pool.map(one, range(len(reqs))))
        wall = time.monotonic() - t0
    lat = sorted(r["latency_s"] for r in out)
    return {"wall_s": wall, "requests_per_s": len(reqs) / wall,
            "latency_s": {"p50": statistics.median(lat), "p90": lat[int(0.9 * (len(lat) - 1))], "max": lat[-1]},
            "errors": sum(r["status"] != 200 for r in out), "peak_rss_kib": rss_at, "answers": out}


def rss_growth(phase: dict, cfg: dict) -> float | None:
    a, b = phase["peak_rss_kib"].get(str(cfg["rss_at"])), phase["peak_rss_kib"].get(str(cfg["requests"]))
    return None if not a or not b else b / a - 1


def run(cfg: dict, force: bool = False) -> dict:
    check(cfg)
    out = paths.ROOT / cfg["output"]
    if out.exists() and not force:
        raise results.ResultExists(f"{cfg['output']} exists; pass --force to measure again")
    log_dir = out.with_suffix("")
    log_dir.mkdir(parents=True, exist_ok=True)
    model = models.fetch(cfg["model"])
    binary = tools.require_binary(paths.binary("llama-server"))
    reqs = make_requests(cfg)
    args = server_args(cfg)
    t_start = time.time()

    # phase 1: hook off, each distinct request alone, then all of them concurrently
    with server.Server(model, args, {}, log_dir / "server-off.log", threads=cfg["threads"], binary=binary) as srv:
        alone = {}
        first = {}
        for r in reqs:
            first.setdefault(r["distinct"], r["body"])
        with progress_bar(len(first), "hook off: alone") as bar:
            for d, body in sorted(first.items()):
                alone[d] = srv.post("/completion", body, timeout=cfg["timeout_s"])["content"]
                bar.update()
        off = concurrent(srv, reqs, cfg, "hook off")
        off["crashed"] = not srv.alive()
    mismatch = [a["i"] for a in off["answers"] if a["status"] == 200 and a["content"] != alone[a["distinct"]]]
    off["answers_equal_alone"] = len(off["answers"]) - off["errors"] - len(mismatch)
    off["mismatches"] = mismatch

    # phase 2: hook on
    stats = log_dir / "on.stats.jsonl"
    for old in (stats, stats.with_name(stats.name + ".xz")):
        old.unlink(missing_ok=True)
    hook_env = {k: str(v) for k, v in cfg["hook_env"].items()} | {"ELASTICKV_STATS": paths.relative(stats)}
    with server.Server(model, args, hook_env, log_dir / "server-on.log", threads=cfg["threads"], binary=binary) as srv:
        on = concurrent(srv, reqs, cfg, "hook on")
        slots = {s["id"]: s.get("elastickv") for s in srv.slots()} if srv.alive() else {}
        on["crashed"] = not srv.alive()
    passes_stats: dict[str, set] = {}  # seq -> its passes
    per_pass_seqs: dict[int, set] = {}  # pass -> the seqs it covered
    with tools.open_text(stats) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("record") == "head":
                passes_stats.setdefault(str(rec["seq"]), set()).add(rec["pass"])
                per_pass_seqs.setdefault(rec["pass"], set()).add(rec["seq"])
    on["slot_passes"] = {str(k): (v or {}).get("passes") for k, v in sorted(slots.items())}
    on["stats_passes"] = {k: len(v) for k, v in sorted(passes_stats.items())}
    on["stats_seqs"] = sorted(int(k) for k in passes_stats)

    stats = statsfile.compress(stats)  # xz, as every archived stats file

    for phase in (off, on):
        phase["rss_growth"] = rss_growth(phase, cfg)
    checks = {
        "off_no_error": off["errors"] == 0 and not off["crashed"],
        "off_answers_equal_alone": off["errors"] == 0 and not off["mismatches"],
        "on_no_error": on["errors"] == 0 and not on["crashed"],
        "on_passes_mid_request": sum(on["stats_passes"].values()) > 0,
        "on_slot_passes_match_stats": all(on["slot_passes"].get(k, 0) == n for k, n in on["stats_passes"].items())
                                      and set(on["stats_seqs"]) <= set(range(cfg["slots"])),
        "on_rss_within_tolerance": on["rss_growth"] is not None and on["rss_growth"] <= cfg["rss_tolerance"],
    }
    data = {
        "binary": paths.relative(binary), "server_args": args, "wall_s": time.time() - t_start,
        "hook_env": hook_env, "elastickv": envvars.resolve(hook_env),
        "off": off, "on": on,
        "on_vs_off_requests_per_s": on["requests_per_s"] / off["requests_per_s"],
        "checks": checks, "passed": all(checks.values()),
        "passes_with_several_seqs": sum(len(s) > 1 for s in per_pass_seqs.values()),
    }
    notes = ("Both phases ran one after the other on the same machine, with the same requests and clients; "
             "requests/s = requests / wall time of the concurrent phase. Peak RSS is the server's VmHWM when the "
             f"{cfg['rss_at']}th and the last answer arrived. The stats file is in {paths.relative(log_dir)}.")
    agg = results.aggregate(cfg["artifact"], SCRIPT, cfg, data, [log_dir / "server-off.log",
                                                                   log_dir / "server-on.log", stats], notes)
    results.write_aggregate(out, agg, force=True)
    return agg


def summary(agg: dict) -> str:
    d = agg["data"]
    lines = []
    for name in ("off", "on"):
        p = d[name]
        g = "n/a" if p["rss_growth"] is None else f"{100 * p['rss_growth']:+.2f} %"
        lines.append(f"hook {name}: {p['requests_per_s']:.2f} requests/s, latency p50 {p['latency_s']['p50']:.2f} s "
                     f"p90 {p['latency_s']['p90']:.2f} s, {p['errors']} errors, peak RSS growth {g}")
    lines.append(f"hook off: {d['off']['answers_equal_alone']} of {len(d['off']['answers'])} answers equal the "
                 f"answer sent alone")
    lines.append(f"hook on: passes per slot {d['on']['slot_passes']} (stats file: {d['on']['stats_passes']})")
    lines.append("checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in d["checks"].items()))
    return "\n".join(lines)


def main() -> int:
    args = startup.parse_args(startup.driver_parser(__doc__, "server_load"))
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides)
        agg = run(cfg, force=args.force)
    except startup.driver_errors(LoadError, server.ServerError) as e:
        return startup.fail(__file__, e)
    print(summary(agg))
    print(f"\nserver_load: {cfg['output']} written")
    return 0 if agg["data"]["passed"] else 2


if __name__ == "__main__":
    sys.exit(main())
