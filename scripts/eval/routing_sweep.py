#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Synthetic routing suite under a compression sweep, with the Global Eviction Ratio (Figure 10, Table 17).

Items come from the seeded generator scripts/elastickv/routing_suite.py (entity tracking, disambiguation,
coreference, multi-hop; exact answers). Each item is answered by the real llama-completion (chat template,
greedy, -b = -ub = EVICT_EVERY, flash attention off) once with the hook off and once per policy and kept
fraction. Passes run at the end of every full prompt ubatch, so the answer is generated from a cache the
policy has already compressed (SPEC §2); the cells written after the last pass (at most EVICT_EVERY - 1: the
question and the template's tail) are not yet compressed, as in streaming use.

Routing metrics (scripts/elastickv/routing.py) are computed at the last pass before the answer from the
hook's ELASTICKV_DUMP of that pass:
* token policies: GER = fraction of the answer-relevant tokens (the tokens of the fact sentences the answer
  depends on, from the suite's character spans, located with the model's tokenizer, +-1 token at the joins)
  evicted from every KV head of every layer; also per layer (max over layers), the plain eviction fraction
  of those tokens, and head consensus (distinct argmax cells of the accumulated scores across the KV heads of
  a layer / heads; sinks excluded) for the score-based policies;
* ElasticKV (element zeroing, no token ever leaves the softmax, so GER is 0 by construction): the element
  analogue = fraction of answer tokens whose K row is at least ``element_min_zero`` zero in every KV head of a
  layer (max and mean over layers).

Every run writes a record (kind "routing") and its raw log under ``runs_dir``/<model>/; dumps are read and
deleted. An interrupted sweep resumes: finished runs are reused, never redone.

Examples:
  scripts/eval/routing_sweep.py
  scripts/eval/routing_sweep.py --set kept=[0.1] --set policies=[h2o] --set n_per_task=1

Exit status: 0 done, 1 an error (one line on stderr), 2 bad arguments.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from elastickv import (config, dump, envvars, logparse, models, paths, policies, pypi, results, routing,  # noqa: E402
                       routing_suite, startup, tools)
from elastickv.progress import bar as progress_bar  # noqa: E402
import f5_niah  # noqa: E402  (tokenizer and log parsing shared with the NIAH grid)

SCRIPT = "scripts/eval/routing_sweep.py"
DEFAULTS = {
    "artifact": "Figure 10", "model": "smollm2-135m", "seed": 1234, "n_per_task": 3, "target_words": 350,
    "kept": [], "policies": [], "elastickv_scales": {}, "sink": 4, "evict_every": 64, "flash_attn": "off",
    "n_predict": 32, "threads": 2, "omp_wait_policy": "passive", "variant": "cpu", "element_min_zero": 0.9,
    "runs_dir": "", "output": "",
}
CACHE = paths.CACHE / "routing"


class RoutingError(RuntimeError):
    """A sweep that cannot run as configured; the message says why."""


def answer_tokens(tok: f5_niah.Tokenizer, item: dict) -> tuple[int, list[int]]:
    """(prompt tokens, positions of the answer-relevant tokens) of an item's formatted prompt."""
    user = routing_suite.prompt_text(item)
    ctx_at = user.index(item["context"])
    text = tok.format(user)
    head = tok.prefix + user[:ctx_at]
    cells: set[int] = set()
    for s, e in item["answer_spans"]:
        a = tok.count(head + item["context"][:s])
        b = tok.count(head + item["context"][:e])
        cells.update(range(a, max(b, a + 1)))
    return tok.count(text), sorted(cells)


def last_pass_metrics(folder: Path, policy: str, n_prompt: int, ans: list[int], cfg: dict) -> dict:
    """Routing metrics at the last pass that ran before the first answer token."""
    if policy == "elastickv":
        # passes that ran before the first answer token (later ones, during generation, are ignored)
        found = [p for p in dump.passes(folder)
                 if max(q["pos_max"] for q in dump.load(folder, *p).manifest["seqs"]) < n_prompt]
        if not found:
            return {"passes_before_answer": 0}
        d = dump.load(folder, *found[-1])
        cells = d.cells["k"]
        pos = cells[:, 2]
        order = np.argsort(pos)
        k_rows = np.stack([d.values(layer, "k", "after")[order] for layer in d.layers])  # [L, n, H, hd]
        idx = np.searchsorted(pos[order], [a for a in ans if a <= pos.max()])
        if len(idx) == 0:
            return {"passes_before_answer": len(found), "answer_cells_covered": 0}
        summ = routing.element_ger_summary(k_rows, idx, cfg["element_min_zero"])
        zero = float((k_rows[:, idx] == 0).mean())
        return {"passes_before_answer": len(found), "last_pass_pos": int(pos.max()),
                "answer_cells_covered": int(len(idx)), "element_ger_max": summ["max"],
                "element_ger_mean": summ["mean"], "answer_k_zero_fraction": zero,
                "kept_entries_k": float((k_rows != 0).mean())}
    # "n_logical" (the sequence's logical length) counts the positions a freeing pass no longer holds; dumps
    # written before cells were freed carry only "n" (= the logical length there)
    def logical_length(key: tuple[int, int, int]) -> int:
        m = dump.token_manifest(folder, *key)
        return m.get("n_logical", m["n"])

    found = [p for p in dump.token_passes(folder) if logical_length(p) <= n_prompt]
    if not found:
        return {"passes_before_answer": 0}
    t = dump.load_token(folder, *found[-1])
    # the eviction map over logical positions 0..n-1: a position the dump does not hold was freed by an earlier
    # pass (evicted from every layer and KV head); the dump's cells are in ascending position
    n = logical_length(found[-1])
    kept = np.zeros(t.after.shape[:2] + (n,), dtype=bool)  # [L, H, n]
    kept[:, :, t.pos] = ~t.after
    idx = np.array([a for a in ans if a < n], dtype=np.int64)
    out = {"passes_before_answer": len(found), "last_pass_pos": int(t.pos.max()),
           "answer_cells_covered": int(len(idx)), "kept_cells": float(kept.mean())}
    if len(idx):
        out |= {"ger": float(routing.global_eviction_ratio(kept, idx)),
                "ger_layer_max": float(np.max(routing.global_eviction_ratio(kept, idx, scope="layer"))),
                "answer_eviction_fraction": float(routing.eviction_fraction(kept, idx))}
    if policies.policy(policy).score != "none":
        # scores exist for the cells the pass holds; the first `sink` of them are the sinks (never freed)
        valid = routing.valid_cells(len(t.pos), cfg["sink"])
        out["head_consensus"] = float(routing.mean_head_consensus(t.score, valid))
    return out


def run_one(cfg: dict, tok: f5_niah.Tokenizer, item: dict, policy: str | None, kept: float | None,
            n_prompt: int, ans: list[int], out_dir: Path, items_file: Path) -> dict:
    name = f"{item['id']}-{'baseline' if policy is None else f'{policy}-{kept:g}'}"
    env = envvars.matched_env(policy, kept, cfg["elastickv_scales"], sink=cfg["sink"],
                          evict_every=cfg["evict_every"])
    settings = {"script": SCRIPT, "model": cfg["model"], "item": item["id"], "policy": policy, "kept": kept,
                "hook": env, **{k: cfg[k] for k in ("seed", "n_per_task", "target_words", "sink", "evict_every",
                                                    "flash_attn", "n_predict", "threads", "variant",
                                                    "element_min_zero")}}
    rec_path = out_dir / f"{name}.json"
    if rec_path.exists():
        old = json.loads(rec_path.read_text())
        if old.get("settings") == settings:
            return old
        raise RoutingError(f"{paths.relative(rec_path)} holds a run with other settings; use another runs_dir")
    model_path = models.fetch(cfg["model"])
    binary = tools.require_binary(paths.binary("llama-completion", variant=cfg["variant"]))
    prompt_path = CACHE / "prompts" / f"{item['id']}.txt"
    prompt_path.parent.mkdir(parents=True, exist_ok=True)
    prompt_path.write_text(routing_suite.prompt_text(item) + "\n")  # -f drops one trailing newline
    dump_dir = CACHE / "dump" / name
    shutil.rmtree(dump_dir, ignore_errors=True)
    proc_env = dict(env)
    if env:
        proc_env["ELASTICKV_DUMP"] = paths.relative(dump_dir)
    proc_env["OMP_WAIT_POLICY"] = str(cfg["omp_wait_policy"]).upper()
    e = cfg["evict_every"]
    ctx = -(-(n_prompt + cfg["n_predict"] + 64) // 256) * 256
    cmd = [paths.relative(binary), "-m", paths.relative(model_path), "-f", paths.relative(prompt_path),
           "-cnv", "-st", "--jinja", "--no-display-prompt", "--no-escape", "--no-warmup", "--keep", "-1",
           "-n", str(cfg["n_predict"]), "--temp", "0", "--seed", "1", "-c", str(ctx), "-b", str(e), "-ub", str(e),
           "-t", str(cfg["threads"]), "-fa", cfg["flash_attn"], "-lv", "4"]
    log_path = out_dir / f"{name}.log"
    started = results.now()
    t0 = time.time()
    _, log = tools.run(cmd, log_path, proc_env)
    wall = time.time() - t0
    n_tok, generated, stop = f5_niah.parse_generation(log)
    if n_tok != n_prompt:
        raise RoutingError(f"{name}: llama-completion tokenized the prompt to {n_tok} tokens, the driver counted "
                           f"{n_prompt}; log: {paths.relative(log_path)}")
    metrics = {"prompt_tokens": n_prompt, "answer_tokens": ans, "answer": item["answer"], "generated": generated,
               "stop": stop, "correct": routing_suite.score(generated, item["answer"]), "wall_s": wall,
               "kv_mib": logparse.kv_cache(log).mib}
    if env:
        metrics |= last_pass_metrics(dump_dir, policy, n_prompt, ans, cfg)
        shutil.rmtree(dump_dir, ignore_errors=True)
    _, m = models.entry(cfg["model"])
    rec = {
        "schema_version": 1, "kind": "routing", "name": name, "started": started, "finished": results.now(),
        "command": cmd, "env": env, "elastickv": envvars.resolve(env), "settings": settings,
        "git": results.git_info(), "upstream": results.upstream_info(patched=True),
        "build": {"tree": paths.relative(paths.LLAMA_SRC), "variant": cfg["variant"], "binary": cmd[0]},
        "model": {"name": cfg["model"], "file": paths.relative(paths.MODELS / m["file"]), "sha256": m["sha256"]},
        "data": {"file": paths.relative(items_file), "sha256": pypi.sha256_of(items_file)},
        "device": results.device_info(), "metrics": metrics, "log": paths.relative(log_path),
    }
    results.validate(rec)
    results.write_json_atomic(rec_path, rec)
    return rec


#: routing metrics averaged per (policy, kept) over the runs that have them (routing.py; None where not measured)
METRICS = ["ger", "ger_layer_max", "answer_eviction_fraction", "head_consensus", "element_ger_max", "element_ger_mean",
           "kept_cells", "kept_entries_k"]


def summarize(rows: list[dict]) -> list[dict]:
    """Accuracy (overall and per task) and the mean routing metrics per (policy, kept), in the order the pairs first
    occur; a metric no run of the pair has is None."""
    out = []
    for (policy, kept), g in pd.DataFrame(rows).groupby(["policy", "kept"], sort=False):
        means = g[METRICS].astype(float).mean()  # skips the runs without the metric (None)
        out.append({"policy": policy, "kept": float(kept), "n": len(g), "accuracy": float(g["correct"].mean()),
                    "by_task": g.groupby("task")["correct"].mean().astype(float).to_dict(),
                    **{k: None if np.isnan(v) else float(v) for k, v in means.items()}})
    return out


def run(cfg: dict) -> dict:
    models.entry(cfg["model"])
    for p in cfg["policies"]:
        if p != "elastickv":
            if policies.policy(p).token is False:
                raise config.ConfigError(f"policy {p}: the routing sweep takes token policies and elastickv")
    out_dir = paths.ROOT / cfg["runs_dir"] / cfg["model"]
    out_dir.mkdir(parents=True, exist_ok=True)
    items = routing_suite.generate(cfg["seed"], cfg["n_per_task"], cfg["target_words"])
    items_file = out_dir / "items.jsonl"
    routing_suite.write_jsonl_atomic(items_file, items)
    tok = f5_niah.Tokenizer(cfg["model"], cfg["variant"])
    rows, sources = [], [items_file]
    try:
        configs = [(None, None)] + [(p, k) for k in cfg["kept"] for p in cfg["policies"]]
        with progress_bar(len(items) * len(configs), f"{cfg['artifact']} runs") as bar:
            for item in items:
                n_prompt, ans = answer_tokens(tok, item)
                for policy, kept in configs:
                    rec = run_one(cfg, tok, item, policy, kept, n_prompt, ans, out_dir, items_file)
                    m = rec["metrics"]
                    rows.append({"item": item["id"], "task": item["task"], "policy": policy or "baseline",
                                 "kept": 1.0 if kept is None else kept, "correct": m["correct"],
                                 **{k: m.get(k) for k in ("ger", "ger_layer_max", "answer_eviction_fraction",
                                                          "head_consensus", "element_ger_max", "element_ger_mean",
                                                          "kept_cells", "kept_entries_k", "prompt_tokens")},
                                 "record": paths.relative(out_dir / f"{rec['name']}.json")})
                    sources.append(out_dir / f"{rec['name']}.json")
                    bar.update()
    finally:
        tok.close()
    summary = summarize(rows)
    corr = {}
    for p in cfg["policies"]:
        pts = [(s["ger"], 1 - s["accuracy"]) for s in summary if s["policy"] == p and s.get("ger") is not None]
        if len(pts) >= 2:
            corr[p] = routing.pearson([a for a, _ in pts], [b for _, b in pts])
    notes = ("accuracy: exact match (routing_suite.score). GER (token policies): answer-relevant tokens evicted "
             "from every KV head of every layer at the last pass before the answer; element_ger_* (ElasticKV): "
             f"answer tokens whose K row is >= {cfg['element_min_zero']} zero in every KV head of a layer (max/mean "
             "over layers). pearson_ger_error: Pearson r between GER and error rate across the kept levels of each "
             "policy (nan when GER is constant). Prompts are short (~500 tokens): compression is of the cells "
             "before the last pass; the question and template tail after it are not compressed.")
    agg = results.aggregate(cfg["artifact"], SCRIPT, cfg, {"items": len(items), "runs": rows, "summary": summary,
                                                           "pearson_ger_error": corr}, sources, notes)
    results.write_aggregate(paths.ROOT / cfg["output"], agg, force=True)
    return agg


def main(argv: list[str] | None = None) -> int:
    args = startup.parse_args(startup.driver_parser(__doc__, "fig10_routing_sweep"), argv)
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides)
        agg = run(cfg)
    except startup.driver_errors(RoutingError, f5_niah.NiahError, ValueError) as e:
        return startup.fail(__file__, e)
    for s in agg["data"]["summary"]:
        ger = "—" if s["ger"] is None else f"{s['ger']:.2f}"
        eg = "—" if s["element_ger_max"] is None else f"{s['element_ger_max']:.2f}"
        print(f"{s['policy']:>14} kept {s['kept']:.2f}: accuracy {100 * s['accuracy']:5.1f}%  GER {ger}  element {eg}")
    print(f"\nrouting_sweep: {cfg['output']} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
