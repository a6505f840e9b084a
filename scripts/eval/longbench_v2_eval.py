#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
r"""LongBench-v2 multiple choice (paper Tables 7-8): baseline and ElasticKV side by side, overall and per domain.

Every question of THUDM/LongBench-v2 (a long context, a question, four choices, one correct letter) is asked
through the patched llama-completion with the model's own chat template (--jinja), greedy decoding, once per
row of the config (baseline: hook off; sweet: ElasticKV preset sweet) and per seed. The prompt is LongBench-v2's
official 0-shot template; the context is cut in the middle until the chat-formatted prompt fits ``max_ctx``
tokens, counted exactly by the model's own tokenizer inside llama-completion. The answer letter is read with
LongBench-v2's official regex (exact-match scoring; no letter = wrong); a lenient reading is reported beside it.
Official regex, on the response with '*' removed: r"The correct answer is \(([A-D])\)", else
r"The correct answer is ([A-D])" (LENIENT_PATTERNS below are the lenient reading's further tries).

Data (nothing is downloaded unless asked for):
  --data PATH   LongBench-v2's data.json (a JSON array), a JSONL file of items in the same format, or a
                directory written by datasets' Dataset.save_to_disk (all read with the `datasets` library)
  --data hub    load THUDM/LongBench-v2 from the Hugging Face hub with `datasets` (needs the hub reachable, or
                the data set in its cache)

Seeds: each seed is llama-completion's --seed and, when ``items`` > 0, the seed of the random sample of items
(so seeds then see different questions). With greedy decoding and all items, the seeds are identical repeats.

Outputs under ``output_dir``: ``<model>/records.jsonl`` (one line per question, model, row and seed; append-only,
keyed by (model, row, seed, _id)), the raw llama-completion log of every question in ``<model>/logs/``, and the
table's numbers in ``<model>.json`` (per seed, mean +- std over seeds, overall, per domain, difficulty and
length). An interrupted run resumes: finished questions are reused, never redone. Records or a result made with
other settings are refused unless --force.

Examples:
  scripts/eval/longbench_v2_eval.py --data build/downloads/LongBench-v2/data.json
  scripts/eval/longbench_v2_eval.py --data hub --set items=50 --set models=[smollm2-135m]
  scripts/eval/longbench_v2_eval.py --data tests/data/longbench_v2_fixture.jsonl --set output_dir=build/cache/lb
    (the synthetic test fixture: a smoke test, refused under results/)
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

from elastickv import config, envvars, hub, logparse, models, paths, results, startup, tools
from elastickv.progress import bar as progress_bar  # noqa: E402

DEFAULTS = {
    "artifact": "",            # e.g. "Tables 7-8"
    "models": [],              # names from configs/models.yaml
    "data": "",                # a JSON / JSONL file of LongBench-v2 items, or "hub" (the datasets library)
    "items": 0,                # questions per seed: 0 = all; N = a random sample of N (random.Random(seed))
    "seeds": [42, 123, 456],   # llama-completion --seed, and the seed of the item sample
    "rows": [],                # [{name, preset | scale_k/scale_v, sink, mode, warm}]: a hook key switches it on
    "max_ctx": {},             # per model: most prompt tokens (chat template included); the context is cut to fit
    "n_predict": 32,           # -n: most generated tokens
    "evict_every": 64,         # ELASTICKV_EVICT_EVERY of the hook rows
    "batch": 64,               # -b and -ub
    "flash_attn": "on",        # -fa
    "threads": 2,              # -t
    "variant": "cpu",          # which build runs: cpu or cuda
    "output_dir": "results/longbench",
}

HOOK_KEYS = ("preset", "scale_k", "scale_v", "sink", "mode", "warm")
FIELDS = ("_id", "domain", "sub_domain", "difficulty", "length", "question", "choice_A", "choice_B", "choice_C",
          "choice_D", "answer", "context")
LETTERS = "ABCD"
HUB_DATASET = "THUDM/LongBench-v2"
FIXTURE_PREFIX = "synthetic-fixture-"  # the _id of tests/data/longbench_v2_fixture.jsonl's invented items
DATA_HELP = ("get LongBench-v2's data.json (https://huggingface.co/datasets/THUDM/LongBench-v2) and pass "
             "--data PATH/data.json, or pass --data hub with the Hugging Face hub reachable")

# LongBench-v2's official 0-shot prompt (prompts/0shot.txt of THUDM/LongBench), filled as its pred.py does.
TEMPLATE = ("Please read the following text and answer the question below.\n\n<text>\n$DOC$\n</text>\n\n"
            "What is the correct answer to this question: $Q$\nChoices:\n(A) $C_A$\n(B) $C_B$\n(C) $C_C$\n"
            "(D) $C_D$\n\nFormat your response as follows: \"The correct answer is (insert answer here)\".")
TEMPLATE_VERSION = 1  # bump when TEMPLATE, truncate_middle or the extraction rules change

# Answer extraction. Official (LongBench-v2 pred.py extract_answer): on the response with '*' removed, the
# first of these that matches gives the letter; none = no answer (scored wrong).
OFFICIAL_PATTERNS = (re.compile(r"The correct answer is \(([A-D])\)"), re.compile(r"The correct answer is ([A-D])"))
# Lenient (reported beside, for small models that do not follow the format): official first, then
# "answer is X" / "Answer: (X)", then the first "(X)", then a response that starts with the letter ("B." "B)" "B").
LENIENT_PATTERNS = (
    re.compile(r"[Aa]nswer\s*(?:is|:)\s*:?\s*\(?([A-D])(?![A-Za-z0-9])"),
    re.compile(r"\(([A-D])\)"),
    re.compile(r"^\s*([A-D])(?:[.):]|\s*$)"),
)
# the chat-formatted prompt longer than the context: llama-completion's own check (tools/completion)
TOO_LONG = re.compile(r"prompt is too long \((\d+) tokens, max (\d+)\)")
N_PROMPT = re.compile(r"number of tokens in prompt = (\d+)")
PROMPT_EVAL = re.compile(r"prompt eval time =\s*[\d.]+ ms /\s*(\d+) tokens")
COUNT_CTX = 256            # llama.cpp's smallest context: a longer prompt fails at once, before any decoding
PRETRIM_CHARS_PER_TOKEN = 16  # contexts are first cut to 16 chars per max_ctx token (no tokenizer packs more)


class DataError(RuntimeError):
    """No data, or data that is not LongBench-v2 items; the message says how to get it."""


class RecordConflict(RuntimeError):
    """Finished questions were recorded with other settings; --force redoes them."""


# --------------------------------------------------------------------------------------------------- data

def validate_item(item: object, where: str) -> dict:
    if not isinstance(item, dict):
        raise DataError(f"{where}: an item is a JSON object with {', '.join(FIELDS)}")
    missing = [k for k in FIELDS if k not in item]
    if missing:
        raise DataError(f"{where}: item {item.get('_id', '?')!r} lacks {', '.join(missing)} (a LongBench-v2 item "
                        f"has {', '.join(FIELDS)})")
    for k in FIELDS:
        if not isinstance(item[k], str):
            raise DataError(f"{where}: item {item['_id']!r}: {k} is not a string")
    if item["answer"] not in LETTERS:
        raise DataError(f"{where}: item {item['_id']!r}: answer {item['answer']!r} is not one of A, B, C, D")
    return {k: item[k] for k in FIELDS}


def validate_items(raw: list, where: str) -> list[dict]:
    """Every item checked (validate_item), at least one, no _id twice."""
    items = [validate_item(it, where) for it in raw]
    if not items:
        raise DataError(f"{where}: no items")
    ids = [it["_id"] for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{where}: _id {dup!r} occurs more than once")
    return items


def load_data(source: str) -> tuple[list[dict], dict]:
    """(items, provenance) through the datasets library (elastickv.hub.load_records). ``source``: "hub"
    (THUDM/LongBench-v2), a JSON array / JSON-lines file (the official data.json), or a directory written by
    Dataset.save_to_disk; empty: a DataError saying how to get it. Every item is validated (validate_items)."""
    if not source:
        raise DataError(f"no LongBench-v2 data given: {DATA_HELP}")
    path = Path(source)
    if source != "hub" and not path.is_absolute():
        path = (Path.cwd() / path) if (Path.cwd() / path).exists() else paths.ROOT / path
    if source != "hub" and not path.exists():
        raise DataError(f"no data file {source}: {DATA_HELP}")
    try:
        raw, prov = hub.load_records("hub" if source == "hub" else path, HUB_DATASET, split="train",
                                     offline_hint=f"offline: {DATA_HELP.split(', or ')[0]}")
    except hub.HubError as e:
        raise DataError(str(e)) from None
    where = HUB_DATASET if source == "hub" else paths.relative(path)
    return validate_items(raw, where), prov


def item_sha256(item: dict) -> str:
    return hashlib.sha256(json.dumps({k: item[k] for k in FIELDS}, sort_keys=True,
                                     ensure_ascii=False).encode("utf-8")).hexdigest()


def sample_items(items: list[dict], n: int, seed: int) -> list[dict]:
    """The items a seed asks: all (n = 0 or n >= len) in _id order, or random.Random(seed).sample of them."""
    ordered = sorted(items, key=lambda it: it["_id"])
    if n <= 0 or n >= len(ordered):
        return ordered
    return sorted(random.Random(seed).sample(ordered, n), key=lambda it: it["_id"])


# ------------------------------------------------------------------------------------------------- prompt

def build_prompt(item: dict, context: str | None = None) -> str:
    """The official 0-shot prompt of an item (``context`` replaces the item's, e.g. once truncated)."""
    doc = item["context"].strip() if context is None else context
    # one pass over the template: a $Q$ inside the context is never substituted again
    values = {"$DOC$": doc, "$Q$": item["question"].strip(), "$C_A$": item["choice_A"].strip(),
              "$C_B$": item["choice_B"].strip(), "$C_C$": item["choice_C"].strip(), "$C_D$": item["choice_D"].strip()}
    return re.sub(r"\$(?:DOC|Q|C_A|C_B|C_C|C_D)\$", lambda m: values[m.group(0)], TEMPLATE)


def truncate_middle(text: str, keep: int) -> str:
    """The first keep//2 and the last keep - keep//2 characters of ``text`` (all of it when it is shorter),
    as LongBench-v2 keeps the two ends of an over-long input."""
    if keep >= len(text):
        return text
    keep = max(0, keep)
    head = keep // 2
    return text[:head] + text[len(text) - (keep - head):]


def fit_prompt(item: dict, max_ctx: int, count) -> tuple[str, dict]:
    """The prompt with the context cut in the middle so that ``count(prompt)`` <= max_ctx tokens.

    ``count`` returns the tokens of the chat-formatted prompt (the model's tokenizer). Tokens are near enough
    proportional to characters that a few rescalings reach the budget; the result is checked, never estimated.
    """
    ctx = item["context"].strip()
    info = {"context_chars": len(ctx), "max_ctx": max_ctx}
    keep = min(len(ctx), PRETRIM_CHARS_PER_TOKEN * max_ctx)
    prompt = build_prompt(item, truncate_middle(ctx, keep))
    n = count(prompt)
    if n <= max_ctx:
        return prompt, {**info, "kept_chars": keep, "truncated": keep < len(ctx), "prompt_tokens": n}
    fixed = count(build_prompt(item, ""))
    if fixed >= max_ctx:
        raise DataError(f"item {item['_id']!r}: the prompt without its context already takes {fixed} tokens, "
                        f"more than max_ctx = {max_ctx}")
    for _ in range(12):
        keep = min(keep - 1, int(keep * (max_ctx - fixed) / max(1, n - fixed) * 0.995))
        prompt = build_prompt(item, truncate_middle(ctx, keep))
        n = count(prompt)
        if n <= max_ctx:
            return prompt, {**info, "kept_chars": keep, "truncated": True, "prompt_tokens": n}
    raise DataError(f"item {item['_id']!r}: could not fit the prompt into {max_ctx} tokens")


# ------------------------------------------------------------------------------------------------ answers

def extract_answer(response: str) -> str | None:
    """LongBench-v2's official rule: the letter of "The correct answer is (X)" or "... is X" ('*' removed)."""
    text = response.replace("*", "")
    for pat in OFFICIAL_PATTERNS:
        m = pat.search(text)
        if m:
            return m.group(1)
    return None


def extract_answer_lenient(response: str) -> tuple[str | None, str | None]:
    """(letter, "official" | "lenient" | None): the official rule, then LENIENT_PATTERNS in order."""
    official = extract_answer(response)
    if official:
        return official, "official"
    text = response.replace("*", "")
    for pat in LENIENT_PATTERNS:
        m = pat.search(text)
        if m:
            return m.group(1), "lenient"
    return None, None


def score(pred: str | None, answer: str) -> bool:
    """Exact match of the extracted letter; no letter is wrong."""
    return pred is not None and pred == answer


# ---------------------------------------------------------------------------------------- llama-completion

def read_log(text: str) -> dict:
    """A ``--log-jsonl`` llama-completion log: the generated text, whether it ended on EOG, and the plain
    text of the log messages (for the hook's lines). Non-JSON lines are kept as plain text."""
    plain, gen = [], []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            plain.append(line + "\n")
            continue
        if not isinstance(obj, dict) or obj.get("type") != "log":
            continue
        msg = obj.get("msg", "")
        plain.append(msg)
        if obj.get("level") == "none":
            gen.append(msg)
    if gen and gen[-1] == "\n\n":  # printed once when the generation ends
        gen.pop()
    eog = bool(gen) and gen[-1] == " [end of text]\n"
    if eog:
        gen.pop()
    return {"response": "".join(gen), "eog": eog, "plain": "".join(plain)}


def completion_cmd(model_rel: str, prompt_rel: str, n_ctx: int, n_predict: int, seed: int, cfg: dict) -> list[str]:
    return [paths.relative(paths.binary("llama-completion", variant=cfg["variant"])), "-m", model_rel,
            "-f", prompt_rel, "--no-escape", "--jinja", "-cnv", "-st", "--no-display-prompt", "--no-warmup",
            "--log-jsonl", "-n", str(n_predict), "--temp", "0", "--top-k", "1", "-s", str(seed), "-c", str(n_ctx),
            "-b", str(cfg["batch"]), "-ub", str(cfg["batch"]), "-fa", str(cfg["flash_attn"]), "-t", str(cfg["threads"])]


class TokenCounter:
    """Tokens of a chat-formatted prompt, counted by llama-completion itself (same binary, template and
    tokenizer as the run): with a 256-token context a longer prompt is refused before any decoding, and the
    refusal names its length; a shorter one is counted with --verbose-prompt and -n 0."""

    def __init__(self, model_rel: str, cfg: dict, work: Path) -> None:
        self.model_rel = model_rel
        self.cfg = cfg
        self.work = work
        self.calls = 0

    def __call__(self, prompt: str) -> int:
        self.work.mkdir(parents=True, exist_ok=True)
        pfile = self.work / f"count.{os.getpid()}.txt"  # per process: two runs may count at once
        log = self.work / f"count.{os.getpid()}.log"
        pfile.write_text(prompt, encoding="utf-8")
        cmd = completion_cmd(self.model_rel, paths.relative(pfile), COUNT_CTX, 0, 0, self.cfg) + ["--verbose-prompt"]
        rc, text = tools.run(cmd, log, {}, check=False)
        self.calls += 1
        plain = read_log(text)["plain"]
        m = TOO_LONG.search(plain) or (N_PROMPT.search(plain) if rc == 0 else None)
        if m:
            pfile.unlink(missing_ok=True)
            log.unlink(missing_ok=True)
            return int(m.group(1))
        tail = "\n".join(plain.strip().splitlines()[-3:])
        raise tools.ToolError(f"could not count the prompt's tokens (rc {rc}): {tail} "
                              f"(log: {paths.relative(log)})")


# ------------------------------------------------------------------------------------------------ records

def record_key(rec: dict) -> tuple:
    return rec["model"], rec["row"], rec["seed"], rec["_id"]


def read_records(path: Path) -> list[dict]:
    """The records of an append-only JSONL file. A last line without its newline (an interrupted write) is
    cut off the file, so that the next append starts on a fresh line; any other bad line is an error."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
        data = data[:end]
    out = []
    for n, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise RecordConflict(f"{paths.relative(path)}:{n} is not a JSON line ({e}); move the file away "
                                     "to start over") from e
    return out


def append_record(path: Path, rec: dict) -> None:
    """One line, written by a single write() on an O_APPEND descriptor and synced: an interruption leaves either
    the whole line or a tail without newline, which read_records drops."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def rewrite_records(path: Path, recs: list[dict]) -> None:
    """Replaces the file atomically (used by --force to drop records made with other settings)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in recs:
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def row_env(cfg: dict, row: dict) -> dict[str, str]:
    unknown = set(row) - {"name", *HOOK_KEYS}
    if unknown or not row.get("name"):
        raise config.ConfigError(f"row {row.get('name')!r}: unknown keys {sorted(unknown)} or no name; "
                                 f"known: name, {', '.join(HOOK_KEYS)}")
    opts = {k: row[k] for k in HOOK_KEYS if k in row}
    if not opts:
        return envvars.hook_env(enabled=False)
    return envvars.hook_env(evict_every=cfg["evict_every"], verbose=1, **opts)


@functools.lru_cache(maxsize=None)
def _model_sha256(model: str) -> str | None:
    return models.entry(model)[1].get("sha256")


def settings_of(cfg: dict, model: str, row: dict, seed: int, item: dict) -> dict:
    """What a record measures; a record with other settings is not reused. Threads are recorded with each
    question but not compared, so that a run can resume on a machine with another core count."""
    return {"model": model, "model_sha256": _model_sha256(model), "row": row, "env": row_env(cfg, row), "seed": seed,
            "item_sha256": item_sha256(item), "max_ctx": max_ctx_of(cfg, model), "n_predict": cfg["n_predict"],
            "batch": cfg["batch"], "flash_attn": str(cfg["flash_attn"]), "variant": cfg["variant"],
            "template_version": TEMPLATE_VERSION, "chat_template": "model (--jinja)", "sampling": "greedy"}


def max_ctx_of(cfg: dict, model: str) -> int:
    v = cfg["max_ctx"].get(model) if isinstance(cfg["max_ctx"], dict) else cfg["max_ctx"]
    if not isinstance(v, int) or v < 64:
        raise config.ConfigError(f"max_ctx: no prompt budget (an integer >= 64) for {model}; e.g. "
                                 f"--set max_ctx={{{model}: 8192}}")
    return v


def ask(cfg: dict, model: str, model_rel: str, row: dict, seed: int, item: dict, prompt: str, fit: dict,
        out: Path) -> dict:
    """Runs one question and returns its record (raw log kept under ``out``/logs)."""
    env = row_env(cfg, row)
    prompt_sha = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
    pfile = paths.CACHE / "longbench" / "prompts" / model / f"{safe_name(item['_id'])}-{prompt_sha[:16]}.txt"
    if not pfile.exists():  # kept (git-ignored cache) so that the recorded command can be rerun as it is
        pfile.parent.mkdir(parents=True, exist_ok=True)
        tmp = pfile.with_name(pfile.name + f".{os.getpid()}.tmp")
        tmp.write_text(prompt, encoding="utf-8")
        os.replace(tmp, pfile)
    log = out / "logs" / row["name"] / f"s{seed}" / f"{safe_name(item['_id'])}.log"
    n_ctx = fit["prompt_tokens"] + cfg["n_predict"] + 8
    cmd = completion_cmd(model_rel, paths.relative(pfile), n_ctx, cfg["n_predict"], seed, cfg)
    started = results.now()
    t0 = time.time()
    rc, text = tools.run(cmd, log, env, check=False)
    parsed = read_log(text)
    if rc != 0:
        why = logparse.elastickv_error(parsed["plain"]) or "\n".join(parsed["plain"].strip().splitlines()[-3:])
        raise tools.ToolError(f"llama-completion exited with {rc} on {item['_id']} ({row['name']}, seed {seed}): "
                              f"{why} (log: {paths.relative(log)})")
    m = PROMPT_EVAL.search(parsed["plain"])
    echo = logparse.elastickv_echo(parsed["plain"])
    if (echo is not None) != (env.get("ELASTICKV") == "1"):
        raise tools.ToolError(f"{paths.relative(log)}: the hook was {'on' if echo else 'off'}, not as the row "
                              f"{row['name']!r} asks: is build/ the patched tree?")
    passes = logparse.elastickv_passes(parsed["plain"])
    pred = extract_answer(parsed["response"])
    lenient, how = extract_answer_lenient(parsed["response"])
    return {
        "model": model, "row": row["name"], "seed": seed, "_id": item["_id"],
        "domain": item["domain"], "sub_domain": item["sub_domain"], "difficulty": item["difficulty"],
        "length": item["length"], "answer": item["answer"],
        "response": parsed["response"], "stopped": "eog" if parsed["eog"] else "n_predict",
        "pred": pred, "correct": score(pred, item["answer"]),
        "pred_lenient": lenient, "extraction": how, "correct_lenient": score(lenient, item["answer"]),
        "prompt_tokens": int(m.group(1)) if m else None, "prompt_tokens_counted": fit["prompt_tokens"],
        "context_chars": fit["context_chars"], "kept_chars": fit["kept_chars"], "truncated": fit["truncated"],
        "prompt_sha256": prompt_sha,
        "elastickv": echo, "passes": len(passes),
        "last_pass": ({k: passes[-1][k] for k in ("pos_max", "k_zero_pct", "v_zero_pct", "nominal")}
                      if passes else None),
        "settings": settings_of(cfg, model, row, seed, item), "threads": cfg["threads"],
        "command": cmd, "started": started, "seconds": round(time.time() - t0, 3), "log": paths.relative(log),
    }


def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", s)[:120]


# ------------------------------------------------------------------------------------------------ numbers

def _acc(recs: list[dict]) -> dict:
    n = len(recs)
    if not n:
        return {"n": 0}
    return {"n": n,
            "accuracy": 100.0 * sum(r["correct"] for r in recs) / n,
            "accuracy_compensated": 100.0 * sum(1.0 if r["correct"] else 0.25 if r["pred"] is None else 0.0
                                                for r in recs) / n,
            "accuracy_lenient": 100.0 * sum(r["correct_lenient"] for r in recs) / n,
            "answered_pct": 100.0 * sum(r["pred"] is not None for r in recs) / n}


GROUPS = ("domain", "difficulty", "length")
METRICS = ("accuracy", "accuracy_compensated", "accuracy_lenient", "answered_pct")


def seed_scores(recs: list[dict]) -> dict:
    """Accuracy (%) of one row and seed: overall and per domain / difficulty / length."""
    out = {"overall": _acc(recs)}
    for g in GROUPS:
        keys = sorted({r[g] for r in recs})
        out[g] = {k: _acc([r for r in recs if r[g] == k]) for k in keys}
    return out


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1) over seeds; std is 0 for a single seed."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n_seeds": len(values), "values": values}


def over_seeds(per_seed: dict) -> dict:
    """mean +- std over seeds of every number of seed_scores (a group absent from a seed's sample is left out)."""
    def combine(cells: list[dict]) -> dict:
        cells = [c for c in cells if c.get("n")]
        if not cells:
            return {}
        return {**{m: mean_std([c[m] for c in cells]) for m in METRICS}, "n": [c["n"] for c in cells]}

    seeds = list(per_seed.values())
    out = {"overall": combine([s["overall"] for s in seeds])}
    for g in GROUPS:
        keys = sorted({k for s in seeds for k in s[g]})
        out[g] = {k: combine([s[g].get(k, {}) for s in seeds]) for k in keys}
    return out


def summarize(model: str, cfg: dict, recs: dict[tuple, dict], plan_ids: dict[int, list[str]], n_total: int,
              data_info: dict) -> dict:
    rows = [r["name"] for r in cfg["rows"]]
    out = {"model": model, "max_ctx": max_ctx_of(cfg, model), "data": data_info, "items_total": n_total,
           "items_per_seed": {str(s): len(ids) for s, ids in plan_ids.items()}, "seeds": list(plan_ids),
           "prompt": {"template": TEMPLATE, "template_version": TEMPLATE_VERSION,
                      "official_patterns": [p.pattern for p in OFFICIAL_PATTERNS],
                      "lenient_patterns": [p.pattern for p in LENIENT_PATTERNS]},
           "rows": {}, "vs_baseline": {}}
    for row in rows:
        per_seed = {str(s): seed_scores([recs[(model, row, s, i)] for i in ids]) for s, ids in plan_ids.items()}
        rr = [recs[(model, row, s, i)] for s, ids in plan_ids.items() for i in ids]
        hook = [r["last_pass"] for r in rr if r["last_pass"]]
        out["rows"][row] = {
            "per_seed": per_seed, "mean": over_seeds(per_seed),
            "truncated_pct": 100.0 * sum(r["truncated"] for r in rr) / len(rr),
            "prompt_tokens_mean": statistics.fmean(r["prompt_tokens"] or 0 for r in rr),
            "hook": None if not hook else {
                "questions_with_passes": len(hook), "passes_mean": statistics.fmean(r["passes"] for r in rr),
                "last_pass_k_zero_pct_mean": statistics.fmean(h["k_zero_pct"] for h in hook),
                "last_pass_v_zero_pct_mean": statistics.fmean(h["v_zero_pct"] for h in hook),
                "last_pass_nominal_mean": statistics.fmean(h["nominal"] for h in hook)},
        }
    base = rows[0]
    for row in rows[1:]:
        deltas, same_pred, same_lenient, same_resp = [], [], [], []
        for s, ids in plan_ids.items():
            pairs = [(recs[(model, base, s, i)], recs[(model, row, s, i)]) for i in ids]
            deltas.append(100.0 * sum(int(b["correct"]) - int(a["correct"]) for a, b in pairs) / len(pairs))
            same_pred.append(100.0 * sum(a["pred"] == b["pred"] for a, b in pairs) / len(pairs))
            same_lenient.append(100.0 * sum(a["pred_lenient"] == b["pred_lenient"] for a, b in pairs) / len(pairs))
            same_resp.append(100.0 * sum(a["response"] == b["response"] for a, b in pairs) / len(pairs))
        out["vs_baseline"][row] = {"baseline": base, "delta_accuracy_pp": mean_std(deltas),
                                   "same_pred_pct": mean_std(same_pred),
                                   "same_pred_lenient_pct": mean_std(same_lenient),
                                   "same_response_pct": mean_std(same_resp)}
    return out


# ---------------------------------------------------------------------------------------------------- run

def check_rows(cfg: dict) -> None:
    if not cfg["rows"]:
        raise config.ConfigError("rows: none; e.g. [{name: baseline}, {name: sweet, preset: sweet}]")
    names = [r.get("name") for r in cfg["rows"]]
    if len(set(names)) != len(names):
        raise config.ConfigError(f"rows: names must differ ({names})")
    for r in cfg["rows"]:
        row_env(cfg, r)
    if row_env(cfg, cfg["rows"][0]).get("ELASTICKV") != "0":
        raise config.ConfigError("rows: the first row is the baseline the others are compared with: hook off")
    if not cfg["seeds"] or not all(isinstance(s, int) and s >= 0 for s in cfg["seeds"]):
        raise config.ConfigError(f"seeds: non-negative integers, not {cfg['seeds']!r}")
    if not isinstance(cfg["items"], int) or cfg["items"] < 0:
        raise config.ConfigError(f"items: 0 (all) or a positive integer, not {cfg['items']!r}")


def run(cfg: dict, force: bool = False) -> list[dict]:
    """Runs (or resumes) every question of the config and writes one aggregate per model; returns them."""
    for model in cfg["models"]:
        models.entry(model)  # unknown names fail before anything runs
        max_ctx_of(cfg, model)
    if not cfg["models"]:
        raise config.ConfigError("models: none")
    check_rows(cfg)
    items, data_info = load_data(cfg["data"])
    out_dir = paths.ROOT / cfg["output_dir"]
    if any(it["_id"].startswith(FIXTURE_PREFIX) for it in items) and \
            out_dir.resolve().is_relative_to(paths.RESULTS.resolve()):
        raise DataError(f"{cfg['data']} is the synthetic test fixture, not LongBench-v2: its numbers do not belong in "
                        f"results/; pass --set output_dir=build/cache/longbench-fixture")
    tools.require_binary(paths.binary("llama-completion", variant=cfg["variant"]))
    plan_ids = {s: [it["_id"] for it in sample_items(items, cfg["items"], s)] for s in cfg["seeds"]}
    by_id = {it["_id"]: it for it in items}
    aggs = []
    for model in cfg["models"]:
        out = out_dir / model
        rec_path = out / "records.jsonl"
        agg_path = out_dir / f"{model}.json"
        recs: dict[tuple, dict] = {}
        for r in read_records(rec_path):
            recs[record_key(r)] = r
        todo, stale = [], []
        for row in cfg["rows"]:
            for s, ids in plan_ids.items():
                for i in ids:
                    key = (model, row["name"], s, i)
                    want = settings_of(cfg, model, row, s, by_id[i])
                    if key in recs and recs[key]["settings"] == want:
                        continue
                    if key in recs:
                        stale.append((key, recs[key]["settings"], want))
                    todo.append((row, s, by_id[i]))
        if stale and not force:
            key, old, new = stale[0]
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k))
            raise RecordConflict(f"{paths.relative(rec_path)}: {len(stale)} finished question(s) were made with other "
                                 f"settings (e.g. {key[1]} seed {key[2]} {key[3]}: {diff}); use --force to redo them")
        if agg_path.exists() and not force:  # refuse early, not after hours of questions
            old = json.loads(agg_path.read_text())
            if old.get("config") != json.loads(json.dumps(cfg)):
                raise results.ResultExists(f"{paths.relative(agg_path)} was made with another config; use --force "
                                           "to replace it")
        if stale:
            for key, _, _ in stale:
                del recs[key]
            rewrite_records(rec_path, list(recs.values()))
        model_rel = paths.relative(models.fetch(model)) if todo else ""
        counter = TokenCounter(model_rel, cfg, paths.CACHE / "longbench" / "count" / model)
        fits: dict[str, tuple[str, dict]] = {}
        with progress_bar(len(todo), f"LongBench-v2 {model}", "question") as bar:
            for row, s, item in todo:
                if item["_id"] not in fits:
                    fits[item["_id"]] = fit_prompt(item, max_ctx_of(cfg, model), counter)
                prompt, fit = fits[item["_id"]]
                rec = ask(cfg, model, model_rel, row, s, item, prompt, fit, out)
                append_record(rec_path, rec)
                recs[record_key(rec)] = rec
                bar.update()
        data = summarize(model, cfg, recs, plan_ids, len(items), data_info)
        sources = [rec_path]
        notes = ("Accuracy in %: exact match of the answer letter read with LongBench-v2's official regex (no letter "
                 "= wrong); accuracy_compensated counts no letter as 0.25 (result.py's option); accuracy_lenient "
                 "also accepts 'answer is X', '(X)' or a leading letter. mean +- std (sample, n-1) over seeds; with "
                 "greedy decoding the seeds differ only through the item sample (items > 0). Prompt: the official "
                 "0-shot template in the model's chat template (--jinja); the context is cut in the middle until "
                 "the chat-formatted prompt fits max_ctx tokens (counted by llama-completion's tokenizer). Hook "
                 "rows: -b/-ub = evict_every, so every ubatch and the answer attend to an already sparsified cache; "
                 "last_pass_* are the hook's last pass of each question (ELASTICKV_VERBOSE=1 lines).")
        agg = results.aggregate(cfg["artifact"] or "Tables 7-8", "scripts/eval/longbench_v2_eval.py", cfg, data,
                                sources, notes)
        results.write_aggregate(agg_path, agg, force=force)
        aggs.append(agg)
    return aggs


def _pm(cell: dict, metric: str = "accuracy") -> str:
    if not cell:
        return "—"
    v = cell[metric]
    return f"{v['mean']:.1f} ± {v['std']:.1f}"


def markdown(agg: dict) -> str:
    d = agg["data"]
    lines = [f"### {d['model']} (max_ctx {d['max_ctx']}, seeds {', '.join(map(str, d['seeds']))}, "
             f"items per seed {', '.join(sorted(set(map(str, d['items_per_seed'].values()))))})", "",
             "| row | overall | lenient | answered | easy | hard | short | medium | long |", "|" + "---|" * 9]
    for name, r in d["rows"].items():
        m = r["mean"]
        cells = [_pm(m["overall"]), _pm(m["overall"], "accuracy_lenient"), _pm(m["overall"], "answered_pct")]
        cells += [_pm(m["difficulty"].get(k, {})) for k in ("easy", "hard")]
        cells += [_pm(m["length"].get(k, {})) for k in ("short", "medium", "long")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    domains = sorted({k for r in d["rows"].values() for k in r["mean"]["domain"]})
    lines += ["", "| row | " + " | ".join(domains) + " |", "|" + "---|" * (len(domains) + 1)]
    for name, r in d["rows"].items():
        lines.append(f"| {name} | " + " | ".join(_pm(r["mean"]["domain"].get(k, {})) for k in domains) + " |")
    for name, v in d["vs_baseline"].items():
        lines.append(f"\n{name} vs {v['baseline']}: Δ accuracy {v['delta_accuracy_pp']['mean']:+.1f} ± "
                     f"{v['delta_accuracy_pp']['std']:.1f} pp, same letter {v['same_pred_pct']['mean']:.1f} % "
                     f"(lenient {v['same_pred_lenient_pct']['mean']:.1f} %), "
                     f"same response {v['same_response_pct']['mean']:.1f} %")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = startup.driver_parser(__doc__, "table7_longbench")
    ap.add_argument("--data", help="LongBench-v2 data: a JSON/JSONL file, or `hub` (overrides the config's data)")
    args = startup.parse_args(ap, argv)
    try:
        overrides = list(args.overrides)
        if args.data is not None:
            overrides.append(f"data={json.dumps(args.data)}")
        cfg = config.load(args.config, DEFAULTS, overrides)
        aggs = run(cfg, force=args.force)
    except startup.driver_errors(DataError, RecordConflict) as e:
        return startup.fail(__file__, e, 2 if isinstance(e, DataError) else 1)
    for agg in aggs:
        print(markdown(agg) + "\n")
        print(f"longbench_v2_eval: {cfg['output_dir']}/{agg['data']['model']}.json written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
