#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Needle-in-a-haystack grid of the paper (Table 3): context lengths x needle depths, hook off and on.

Every cell is one prompt, answered by the real llama-completion twice with the same prompt: once with the
hook off (row `baseline`) and once with ElasticKV (row `elastickv`, preset sweet). Prompt (user turn of the
model's own chat template, applied by llama-completion --jinja -cnv -st):

  <instruction>\\n\\n<haystack with the needle>\\n\\n<question>

- haystack: the Paul Graham essays shipped in data/paul_graham_essays (sha256 of every file checked at load),
  in sorted name order, joined with a blank line, cut on a word boundary so that the whole prompt (chat
  template included) has between L and L + length_tolerance tokens, L a multiple of EVICT_EVERY;
- needle: "The special magic number for <city> is <7 digits>.", city and number drawn per cell from `seed`
  (the same for every model and row), inserted on the sentence boundary nearest to the requested depth
  (0 = start of the haystack, 1 = end);
- question: "What is the special magic number for <city> mentioned in the provided text?"
- generation: greedy (--temp 0, fixed --seed), at most n_predict tokens, stops at the end-of-turn token.

Token counts come from the model's own tokenizer: llama-completion -n 0 --keep -1 tokenizes a prompt and
prints its length ("n_keep = N") without evaluating it; the chat template's text around the user turn is
read once from the -lv 5 log. The needle's token span is measured the same way (+-1 token at the joins) and
the prompt length of every run is read back from its log and must equal the one computed beforehand.

SPEC.md §2: the hook must act on the cache the answer is generated from. Prompts are decoded with
-b = -ub = EVICT_EVERY and their length is L + r with 0 <= r <= length_tolerance, so a pass runs at the end
of every full ubatch: the last pass before the first answer token covers positions < L, which holds the
whole haystack because the question and the template's tail after it are longer than length_tolerance
tokens. (llama-completion stops without answering when a prompt batch ends on an end-of-turn token, so
lengths that would put the user turn's end at a batch end are skipped, and every run must have evaluated
the whole prompt.) Every ElasticKV record says how many passes ran before the answer, the last position
they covered, whether the needle was thresholded before the answer (not when it starts in the SINK
positions, i.e. at depth 0), and the K/V sparsity (ELASTICKV_STATS) at that point and at the end.

Scoring (exact match): the generated text is NFKC-normalised, digit-group separators between two digits
(comma, period, apostrophe, underscore, hyphen, any whitespace) are removed, and the answer is correct when
one maximal run of digits equals the needle's number ("7,319,204" and "7 319 204" count; "73192041" does not).

Runner (`runner`, or --runner): llama-completion (default), or llama-cli, the chat tool users run, single turn
and non-interactive (-st with the prompt from -f; it serves the turn through llama.cpp's server code in-process,
which applies the same chat template, --jinja). Both decode the prompt with -b = -ub = EVICT_EVERY, greedy, with
the same seed, so a cell's tokens, passes and answer are the same. llama-cli's answer is read from its transcript
(-o, kept beside the log as <cell>.transcript.txt), its prompt length and timings from its server slot's log lines,
and the stop reason from the number of tokens it generated (n_predict reached, else an end-of-turn token). Records
of the llama-cli runner carry settings.runner = "cli"; the default runner is left out of records and aggregates.

Runs use -t threads with OMP_WAIT_POLICY=omp_wait_policy (passive: no busy-waiting threads on shared
cores, several times faster there; outputs are the same). Every run writes
<runs_dir>/<model>/c<L>-d<depth %>-<row>.json (its record) and .log (the raw log); the ELASTICKV_STATS
files are large and kept in build/cache/niah/ (the records hold their summaries and sha256). The grid goes
to <runs_dir>/<model>.json. An interrupted grid resumes: finished cells are reused, never redone; a cell
or grid made with other settings is refused unless --force (which replaces it).

Examples:
  scripts/eval/f5_niah.py
  scripts/eval/f5_niah.py --runner cli --set runs_dir=build/run/niah-cli
  scripts/eval/f5_niah.py --set models=[qwen2.5-coder-0.5b]
  scripts/eval/f5_niah.py --set 'lengths={smollm2-135m: [512]}' --set depths=[0.5]

Exit status: 0 done, 1 an error (one line on stderr), 2 bad arguments.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from elastickv import config, corpora, envvars, logparse, models, paths, pypi, results, startup, stats, tools
from elastickv.progress import bar as progress_bar  # noqa: E402

SCRIPT = "scripts/eval/f5_niah.py"
#: bump when a change of this file changes the prompts or how they are run (recorded in every cell's settings)
PROMPT_FORMAT = 1

DEFAULTS = {
    "artifact": "Table 3",
    "models": ["smollm2-135m"],
    "lengths": {"smollm2-135m": [512, 1024, 2048, 3072, 4096]},
    "depths": [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0],
    "length_tolerance": 16,
    "seed": 20240611,
    "n_predict": 48,
    "evict_every": 64,
    "flash_attn": "on",
    "threads": 2,
    "omp_wait_policy": "passive",
    "variant": "cpu",
    "haystack_dir": "data/paul_graham_essays",
    "instruction": ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
                    "I will quiz you about the numbers afterwards."),
    "needle": "The special magic number for {city} is {number}.",
    "question": "What is the special magic number for {city} mentioned in the provided text?",
    "cities": ["Lisbon", "Nairobi", "Montreal", "Osaka", "Valparaiso", "Tbilisi", "Reykjavik", "Hanoi",
               "Marrakesh", "Krakow", "Cartagena", "Adelaide", "Bergen", "Cusco", "Dakar", "Edinburgh",
               "Fukuoka", "Gdansk", "Havana", "Istanbul", "Jaipur", "Kyoto", "Ljubljana", "Manila",
               "Nagoya", "Oaxaca", "Porto", "Quito", "Riga", "Seville", "Tallinn", "Ushuaia", "Vilnius",
               "Windhoek", "Yerevan", "Zanzibar", "Antwerp", "Bruges", "Cordoba", "Dublin"],
    "rows": [{"name": "baseline"}, {"name": "elastickv", "preset": "sweet"}],
    "runs_dir": "results/niah",
    "runner": "completion",
}
RUNNERS = {"completion": "llama-completion", "cli": "llama-cli"}  # runner -> the llama.cpp tool answering a cell

HOOK_KEYS = envvars.ROW_KEYS
CACHE = paths.CACHE / "niah"
GEN_RE = re.compile(r"^[\d.]+ I generate: n_ctx = \d+, n_batch = \d+, n_predict = -?\d+, n_keep = (\d+)\n"
                    r"[\d.]+ I \n(.*?)(?=^\d+\.\d+\.\d+\.\d+ [A-Z] |\Z)", re.MULTILINE | re.DOTALL)


class NiahError(RuntimeError):
    """A grid that cannot be run as configured; the message says why and what to do."""


class HaystackError(NiahError):
    """The haystack folder does not match its SHA256SUMS."""


class RecordMismatch(NiahError):
    """A cell record exists with other settings; --force replaces it."""


# --------------------------------------------------------------------------------------------- haystack

def load_haystack(folder: Path | str) -> str:
    """The essays listed in ``folder``/SHA256SUMS, each checked against its hash (corpora.verified_files), in
    sorted name order and joined with a blank line. A missing, changed or unlisted ``*.txt`` file is an error."""
    files = corpora.verified_files(paths.ROOT / folder, error=HaystackError)
    return "\n\n".join(data.decode("utf-8").strip() for data in files.values())


def cut_words(text: str, n_chars: int) -> str:
    """The start of ``text`` up to ``n_chars`` characters, cut at a whitespace (never inside a word)."""
    if n_chars >= len(text):
        return text.rstrip()
    cut = text[:n_chars + 1]
    i = max(cut.rfind(" "), cut.rfind("\n"), cut.rfind("\t"))
    return text[:max(i, 0)].rstrip()


_BOUNDARY = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*(?=\s)|(?<=\S)(?=\n\s*\n)")


def sentence_boundaries(text: str) -> list[int]:
    """Character offsets where a sentence (or paragraph) ends and whitespace follows, plus 0 and len(text)."""
    out = {0, len(text)}
    for m in _BOUNDARY.finditer(text):
        out.add(m.end())
    return sorted(out)


def place_needle(context: str, needle: str, depth: float) -> tuple[str, int]:
    """``context`` with ``needle`` inserted at the sentence boundary nearest to ``depth`` (0..1) of its
    characters; returns (text, offset of the needle in text). Nothing of ``context`` is removed."""
    if not 0.0 <= depth <= 1.0:
        raise NiahError(f"depth {depth} is not in [0, 1]")
    target = depth * len(context)
    b = min(sentence_boundaries(context), key=lambda i: (abs(i - target), i))
    if b == 0:
        return needle + (" " + context if context else ""), 0
    return context[:b] + " " + needle + context[b:], b + 1


def needle_for(cfg: dict, length: int, depth: float) -> tuple[str, str]:
    """(city, 7-digit number) of a cell: fixed by seed, length and depth (the same for every model and row)."""
    rng = random.Random(f"{cfg['seed']}:{length}:{depth:.6f}")
    return rng.choice(cfg["cities"]), str(rng.randint(1_000_000, 9_999_999))


# --------------------------------------------------------------------------------------------- scoring

_SEP_BETWEEN_DIGITS = re.compile(r"(?<=\d)[,.'\u2019_\-\s]+(?=\d)")


def normalise(text: str) -> str:
    """NFKC, then digit-group separators between two digits removed ("7,319 204" -> "7319204")."""
    return _SEP_BETWEEN_DIGITS.sub("", unicodedata.normalize("NFKC", text))


def is_correct(generated: str, answer: str) -> bool:
    """Exact match: one maximal run of digits of the normalised generation equals the answer."""
    return answer in re.findall(r"\d+", normalise(generated))


# --------------------------------------------------------------------------------------------- tokenizer

class Tokenizer:
    """Token counts from the model's own tokenizer, through llama-completion -n 0 (nothing is evaluated)."""

    MARK = "@@NIAH-USER-TURN@@"

    def __init__(self, model: str, variant: str = "cpu") -> None:
        self.model = model
        self.model_path = models.fetch(model)
        _, m = models.entry(model)
        self.binary = tools.require_binary(paths.binary("llama-completion", variant=variant))
        self.dir = CACHE / model
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cache_path = self.dir / f"token-counts-{m['sha256'][:12]}.json"
        self.counts: dict[str, int] = json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}
        self.calls = 0
        self.prefix, self.suffix = self._template()

    def _run(self, args: list[str], text: str) -> str:
        f = self.dir / f"tokenize-{os.getpid()}.txt"
        log_path = f.with_suffix(".log")
        f.write_text(text + "\n")  # -f drops one trailing newline
        cmd = [paths.relative(self.binary), "-m", paths.relative(self.model_path), "-f", paths.relative(f),
               "-n", "0", "--keep", "-1", "-c", "512", "--no-warmup", "--no-escape", "-t", "1"] + args
        self.calls += 1
        _, log = tools.run(cmd, log_path, None, check=False)
        return log

    def close(self) -> None:
        """Saves the token counts and removes this process's scratch files."""
        self.save()
        for ext in (".txt", ".log"):
            (self.dir / f"tokenize-{os.getpid()}{ext}").unlink(missing_ok=True)

    def _template(self) -> tuple[str, str]:
        """The chat template's text before and after the user turn (system prompt included), as
        llama-completion --jinja -cnv -st formats it."""
        log = self._run(["-cnv", "-st", "--jinja", "--no-display-prompt", "-lv", "5"], self.MARK)
        m = re.search(r" D prompt: \"(.*?)\"\n[\d.]+ D tokens: ", log, flags=re.DOTALL)
        if not m or m.group(1).count(self.MARK) != 1:
            raise NiahError(f"{self.model}: could not read the chat-template prompt from llama-completion's log "
                            f"({paths.relative(self.dir / f'tokenize-{os.getpid()}.log')})")
        before, after = m.group(1).split(self.MARK)
        return before, after

    def format(self, user: str) -> str:
        return self.prefix + user + self.suffix

    def count(self, text: str) -> int:
        """Tokens of ``text`` (special tokens parsed, as the chat path tokenizes the formatted prompt)."""
        key = hashlib.sha256(text.encode()).hexdigest()
        if key in self.counts:
            return self.counts[key]
        log = self._run(["-no-cnv", "-lv", "3"], text)
        m = re.search(r"n_keep = (\d+)", log) or re.search(r"prompt is too long \((\d+) tokens", log)
        if not m:
            raise NiahError(f"{self.model}: llama-completion printed no token count "
                            f"({paths.relative(self.dir / f'tokenize-{os.getpid()}.log')})")
        self.counts[key] = int(m.group(1))
        return self.counts[key]

    def save(self) -> None:
        if self.cache_path.exists():  # another run may have added counts meanwhile
            self.counts = json.loads(self.cache_path.read_text()) | self.counts
        results.write_json_atomic(self.cache_path, self.counts)


# --------------------------------------------------------------------------------------------- prompts

@dataclass
class Prompt:
    length: int  # target L
    depth: float
    city: str
    answer: str
    needle: str
    question: str
    user: str  # the user turn
    text: str  # formatted with the chat template
    n_tokens: int
    haystack_chars: int  # characters of the essays used (before the needle is inserted)
    needle_char: int  # offset of the needle in the haystack text (after the space inserted before it)
    depth_chars: float  # the sentence boundary it was inserted at / haystack characters (without the needle)
    haystack_tokens: tuple[int, int]  # [start, end) token positions of the haystack (needle included)
    needle_tokens: tuple[int, int]  # [start, end) token positions of the needle (+-1 at the joins)
    depth_tokens: float  # tokens of haystack before the needle / haystack tokens without the needle

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def build_prompt(tok: Tokenizer, haystack: str, cfg: dict, length: int, depth: float) -> Prompt:
    """The prompt of a cell: L <= tokens <= L + length_tolerance, needle at ``depth`` on a sentence boundary."""
    city, number = needle_for(cfg, length, depth)
    needle = cfg["needle"].format(city=city, number=number)
    question = cfg["question"].format(city=city)
    head = cfg["instruction"] + "\n\n"
    lo, hi = length, length + cfg["length_tolerance"]
    mid = (lo + hi) / 2

    def make(n_chars: int) -> tuple[str, str, int, int]:
        ctx = cut_words(haystack, n_chars)
        text, at = place_needle(ctx, needle, depth)
        user = head + text + "\n\n" + question
        return ctx, text, at, tok.count(tok.format(user))

    # llama-completion decodes the prompt in batches of -b = E tokens and stops without answering when a
    # batch ends on an end-of-turn token: the user turn's end (first token of the template's tail) must not
    # sit at a position E*j - 1, and neither may anything of the template's head.
    e = cfg["evict_every"]
    n_tail = tok.count(tok.suffix)
    if tok.count(tok.prefix) >= e:
        raise NiahError(f"{tok.model}: the chat template's head has {tok.count(tok.prefix)} tokens, more than "
                        f"evict_every ({e}); a prompt batch could end on its end-of-turn token")

    def fits(n: int) -> bool:
        return lo <= n <= hi and (n - n_tail) % e != e - 1

    overhead = make(0)[3]
    if overhead >= lo:
        raise NiahError(f"length {length}: the prompt without haystack already has {overhead} tokens")
    below, above = (0, overhead), None  # (chars, tokens) brackets
    n_chars = int((mid - overhead) * 4.0)
    for _ in range(40):
        ctx, text, at, n = make(n_chars)
        if fits(n):
            break
        if lo <= n <= hi:  # in the window but the turn's end would close a batch: one word more or less
            n_chars += 6 if n <= mid else -6
            continue
        if n < lo:
            below = max(below, (n_chars, n))
        else:
            above = min(above, (n_chars, n)) if above else (n_chars, n)
        if above is None:
            guess = int(below[0] + (mid - below[1]) * max(len(ctx), 1) / max(n - overhead, 1))
            guess = max(guess, below[0] + 1)
        else:
            if above[0] - below[0] <= 1:
                raise NiahError(f"length {length}: no haystack cut gives {lo}..{hi} tokens; "
                                "raise length_tolerance")
            frac = (mid - below[1]) / max(above[1] - below[1], 1)
            guess = int(below[0] + frac * (above[0] - below[0]))
            guess = min(max(guess, below[0] + 1), above[0] - 1)
        n_chars = guess
    else:
        raise NiahError(f"length {length}, depth {depth}: could not fit the prompt to {lo}..{hi} tokens")
    start = tok.count(tok.prefix + head)
    n_start = tok.count(tok.prefix + head + text[:at].rstrip()) if at else start
    n_end = tok.count(tok.prefix + head + text[:at + len(needle)])
    end = tok.count(tok.prefix + head + text)
    tok.save()
    if end > length:  # the last pass before the answer covers positions < length (see the module docstring)
        raise NiahError(f"length {length}: the haystack ends at token {end}, after the last pass before the answer; "
                        f"the question and template tail ({n - end} tokens) must be longer than length_tolerance")
    hay_tokens = end - start - (n_end - n_start)
    return Prompt(length=length, depth=depth, city=city, answer=number, needle=needle, question=question,
                  user=head + text + "\n\n" + question, text=tok.format(head + text + "\n\n" + question),
                  n_tokens=n, haystack_chars=len(ctx), needle_char=at,
                  depth_chars=(at - 1 if at else 0) / max(len(ctx), 1),
                  haystack_tokens=(start, end), needle_tokens=(n_start, n_end),
                  depth_tokens=(n_start - start) / max(hay_tokens, 1))


# --------------------------------------------------------------------------------------------- runs

def cell_name(length: int, depth: float, row: str) -> str:
    return f"c{length}-d{100 * depth:g}-{row}"


#: row keys besides the hook's: the K/V cache type (-ctk and -ctv, default f16) and the physical cap
#: (``kv_cells: auto`` = the smallest ELASTICKV_KV_CELLS the hook accepts for the row's budget at the cell's context)
ROW_EXTRA = ("cache", "kv_cells")


def row_env(cfg: dict, row: dict) -> dict[str, str]:
    unknown = set(row) - {"name", *HOOK_KEYS, *ROW_EXTRA}
    if unknown:
        raise config.ConfigError(f"row {row.get('name')!r}: unknown keys {sorted(unknown)}; "
                                 f"known: name, {', '.join(HOOK_KEYS + ROW_EXTRA)}")
    opts = {k: row[k] for k in HOOK_KEYS if k in row and k != "kv_cells"}
    if opts.get("policy") in ("random_entries", "topk_entries"):
        raise config.ConfigError(f"row {row['name']!r}: the NIAH grid takes ElasticKV and the token policies "
                                 "(element baselines report no pass positions)")
    env = envvars.hook_env(evict_every=cfg["evict_every"], **opts) if opts else {}
    if opts.get("policy", "elastickv") != "elastickv" and cfg["flash_attn"] != "off" \
            and not envvars.frees_all(envvars.resolve(env)):
        raise config.ConfigError(f"row {row['name']!r}: with flash attention only policies whose evictions free "
                                 "their cells run (streaming, random_tokens, sliding_window, lru_fifo, or h2o/scissorhands/lru "
                                 "with scope: shared); "
                                 "others need flash_attn: \"off\" (--set flash_attn=off)")
    if "kv_cells" in row:
        if row["kv_cells"] != "auto" or "budget" not in opts:
            raise config.ConfigError(f"row {row['name']!r}: kv_cells takes auto (the smallest cap for the row's "
                                     "budget), with a budget")
        if not envvars.frees_all(envvars.resolve(env)):
            raise config.ConfigError(f"row {row['name']!r}: kv_cells needs a policy whose evictions free cells")
    return env


def cell_ctx(cfg: dict, length: int) -> int:
    """-c of a cell: the prompt, the tolerance, the answer and a margin, rounded up to 256."""
    return -(-(length + cfg["length_tolerance"] + cfg["n_predict"] + 64) // 256) * 256


def row_runtime(cfg: dict, row: dict, length: int) -> tuple[dict[str, str], list[str]]:
    """The cap (ELASTICKV_KV_CELLS) of a row at a cell's length, and its cache-type flags."""
    env = {}
    if row.get("kv_cells") == "auto":
        env["ELASTICKV_KV_CELLS"] = str(envvars.min_kv_cells(str(row["budget"]), cell_ctx(cfg, length),
                                                             cfg["evict_every"], cfg["evict_every"]))
    cache = str(row.get("cache", "f16"))
    return env, ["-ctk", cache, "-ctv", cache]


def cell_settings(cfg: dict, model: str, length: int, depth: float, row: dict, haystack_sha: str) -> dict:
    """Everything that determines a cell's result; a record with other settings is not reused."""
    _, m = models.entry(model)
    return {
        "prompt_format": PROMPT_FORMAT, "model": model, "model_sha256": m["sha256"], "length": length,
        "depth": depth, "row": row["name"],
        "hook": row_env(cfg, row) | row_runtime(cfg, row, length)[0],
        **({"cache": str(row["cache"])} if "cache" in row else {}),
        "haystack": cfg["haystack_dir"], "haystack_sha256sums": haystack_sha,
        **{k: cfg[k] for k in ("length_tolerance", "seed", "n_predict", "evict_every", "flash_attn", "threads",
                               "variant", "instruction", "needle", "question", "cities")},
        **({"runner": cfg["runner"]} if cfg["runner"] != "completion" else {}),
    }


def check_existing(rec_path: Path, settings: dict, force: bool) -> dict | None:
    """The finished record of a cell with equal settings (resume, also with ``force``), None when it must
    run; a record made with other settings is an error unless ``force`` (then it is replaced)."""
    if not rec_path.exists():
        return None
    old = json.loads(rec_path.read_text())
    if old.get("settings") == settings:
        return old
    if force:
        return None
    diff = sorted(k for k in set(settings) | set(old.get("settings", {}))
                  if settings.get(k) != old.get("settings", {}).get(k))
    raise RecordMismatch(f"{paths.relative(rec_path)} was made with other settings ({', '.join(diff)}); "
                         "use --force to replace it")


def parse_generation(log: str) -> tuple[int, str, str]:
    """(prompt tokens, generated text, stop reason "eog" | "n_predict") from a llama-completion log."""
    m = GEN_RE.search(log)
    if not m:
        raise logparse.LogParseError("no `generate: ... n_keep = N` line followed by the output in the log")
    out = m.group(2).rstrip("\n")
    if out.endswith(" [end of text]"):
        return int(m.group(1)), out[:-len(" [end of text]")], "eog"
    return int(m.group(1)), out, "n_predict"


def parse_cli(log: str, transcript: str, n_predict: int) -> tuple[int, str, str, dict]:
    """(prompt tokens, generated text, stop reason, timings) of a llama-cli run: the prompt length and timings
    from its server slot's log lines (-lv 4), the answer from its transcript (-o: "User:\n...\n\nAssistant:\n"
    the answer, a newline added if it had none, then a blank line; one trailing newline of the answer is lost)."""
    m = re.search(r"new prompt, .*task\.n_tokens = (\d+)", log)
    pe = re.search(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", log)
    ev = re.search(r"\|\s+eval time =\s*([\d.]+) ms /\s*(\d+) tokens", log)
    if not (m and pe and ev):
        raise logparse.LogParseError("no `new prompt ... task.n_tokens = N` / `prompt eval time` / `eval time` lines "
                                     "of llama-cli's server slot in the log (-lv 4)")
    if "\nAssistant:\n" not in "\n" + transcript or not transcript.endswith("\n\n"):
        raise logparse.LogParseError("llama-cli's transcript has no complete `Assistant:` turn")
    answer = transcript[transcript.rindex("Assistant:\n") + len("Assistant:\n"):][:-1]
    answer = answer[:-1] if answer.endswith("\n") else answer
    n_gen = int(ev.group(2))
    timing = {"prompt_eval_ms": float(pe.group(1)), "prompt_eval_tokens": int(pe.group(2)),
              "eval_ms": float(ev.group(1)), "eval_runs": n_gen}
    return int(m.group(1)), answer, "n_predict" if n_gen >= n_predict else "eog", timing


def perf(log: str) -> dict:
    pe = re.search(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", log)
    ev = re.search(r"\s eval time =\s*([\d.]+) ms /\s*(\d+) runs", log)
    return {"prompt_eval_ms": float(pe.group(1)) if pe else None,
            "prompt_eval_tokens": int(pe.group(2)) if pe else None,
            "eval_ms": float(ev.group(1)) if ev else None, "eval_runs": int(ev.group(2)) if ev else None}


def hook_metrics(stats_path: Path, prompt: Prompt, n_prompt: int, resolved: dict) -> dict:
    """Passes and sparsity from ELASTICKV_STATS: before the answer (passes at the end of prompt ubatches,
    positions < n_prompt) and at the end of the run. ElasticKV reads its "head" records; a token policy its
    "evict" records (kept cells instead of the thresholded region; no bitmap)."""
    _, recs = stats.read(stats_path)
    if resolved["policy"] == "elastickv":
        summarize = stats.summarize
        keys = ("sparsity_k_all", "sparsity_v_all", "sparsity_k_region", "sparsity_v_region", "nominal", "bitmap")
        extra = {}
    else:
        summarize = stats.summarize_policy
        keys = ("sparsity_k_all", "sparsity_v_all", "nominal", "kept_cells")
        extra = {"bitmap": None}
    passes = sorted({(r["pass"], r["pos_max"]) for r in recs})
    before = [p for p in passes if p[1] < n_prompt]
    last = before[-1][1] if before else None
    final = summarize(recs)
    at_answer = summarize([r for r in recs if r["pos_max"] < n_prompt]) if before else None
    ns, ne = prompt.needle_tokens
    return {
        "passes": len(passes),
        "pass_pos_max": [p[1] for p in passes],
        "passes_before_answer": len(before),
        "last_pass_pos_before_answer": last,
        "needle_in_sink": ns < resolved["sink"],
        "needle_thresholded_before_answer": bool(last is not None and ns >= resolved["sink"] and ne - 1 <= last),
        "haystack_covered_before_answer": (None if last is None else
                                           (min(last + 1, prompt.haystack_tokens[1]) - prompt.haystack_tokens[0])
                                           / (prompt.haystack_tokens[1] - prompt.haystack_tokens[0])),
        **{k: final[k] for k in keys}, **extra,
        "at_answer": None if at_answer is None else {k: at_answer[k] for k in keys},
        "stats": paths.relative(stats_path),
        "stats_sha256": pypi.sha256_of(stats_path),
    }


def run_cell(cfg: dict, model: str, prompt: Prompt, row: dict, settings: dict, out_dir: Path) -> dict:
    """One run of a cell by the configured runner (llama-completion or llama-cli); writes and returns its record
    (kind "niah" of run.schema.json)."""
    name = cell_name(prompt.length, prompt.depth, row["name"])
    model_path = models.fetch(model)
    runner = cfg["runner"]
    tool = RUNNERS[runner]
    binary = tools.require_binary(paths.binary(tool, variant=cfg["variant"]))
    cache_dir = CACHE / "runs" / re.sub(r"[^\w.-]+", "_", cfg["runs_dir"].strip("/")) / model
    prompt_path = cache_dir / "prompts" / f"c{prompt.length}-d{100 * prompt.depth:g}.txt"
    prompt_path.parent.mkdir(parents=True, exist_ok=True)
    prompt_path.write_text(prompt.user + "\n")  # -f drops one trailing newline
    env = dict(settings["hook"])
    stats_path = None
    if env.get("ELASTICKV") == "1":
        stats_path = cache_dir / "stats" / f"{name}.stats.jsonl"
        stats_path.parent.mkdir(parents=True, exist_ok=True)
        stats_path.unlink(missing_ok=True)  # the hook appends
        env["ELASTICKV_STATS"] = paths.relative(stats_path)
    resolved = envvars.resolve(env)
    e = cfg["evict_every"]
    ctx = cell_ctx(cfg, prompt.length)
    log_path = out_dir / f"{name}.log"
    transcript_path = out_dir / f"{name}.transcript.txt"
    if runner == "completion":
        cmd = [paths.relative(binary), "-m", paths.relative(model_path), "-f", paths.relative(prompt_path),
               "-cnv", "-st", "--jinja", "--no-display-prompt", "--no-escape", "--no-warmup", "--keep", "-1",
               "-n", str(cfg["n_predict"]), "--temp", "0", "--seed", str(cfg["seed"]), "-c", str(ctx),
               "-b", str(e), "-ub", str(e), "-t", str(cfg["threads"]), "-fa", cfg["flash_attn"], "-lv", "4",
               "-ctk", settings.get("cache", "f16"), "-ctv", settings.get("cache", "f16")]
    else:
        # single turn from -f, no colours, no prompt cache across turns, parameters as given (-fit off), the
        # transcript to -o (it is appended to: removed first)
        transcript_path.unlink(missing_ok=True)
        cmd = [paths.relative(binary), "-m", paths.relative(model_path), "-f", paths.relative(prompt_path),
               "-st", "--jinja", "--no-display-prompt", "--no-escape", "--no-warmup", "-co", "off", "-cram", "0",
               "-fit", "off", "-np", "1", "-o", paths.relative(transcript_path),
               "-n", str(cfg["n_predict"]), "--temp", "0", "--seed", str(cfg["seed"]), "-c", str(ctx),
               "-b", str(e), "-ub", str(e), "-t", str(cfg["threads"]), "-fa", cfg["flash_attn"], "-lv", "4",
               "-ctk", settings.get("cache", "f16"), "-ctv", settings.get("cache", "f16")]
    proc_env = dict(env)
    if cfg["omp_wait_policy"]:
        proc_env["OMP_WAIT_POLICY"] = str(cfg["omp_wait_policy"]).upper()
    started = results.now()
    t0 = time.time()
    _, log = tools.run(cmd, log_path, proc_env)
    wall = time.time() - t0
    if runner == "completion":
        n_prompt, generated, stop = parse_generation(log)
        timing = perf(log)
    else:
        if not transcript_path.exists():
            raise NiahError(f"{name}: llama-cli wrote no transcript ({paths.relative(transcript_path)}); "
                            f"log: {paths.relative(log_path)}")
        n_prompt, generated, stop, timing = parse_cli(log, transcript_path.read_text(), cfg["n_predict"])
    if (timing["prompt_eval_tokens"] or 0) < n_prompt - 1:  # a last batch of 1 token counts as "eval"
        raise NiahError(f"{name}: {tool} evaluated {timing['prompt_eval_tokens']} of the {n_prompt} "
                        f"prompt tokens before it stopped; log: {paths.relative(log_path)}")
    if n_prompt != prompt.n_tokens:
        raise NiahError(f"{name}: {tool} tokenized the prompt to {n_prompt} tokens, the driver counted "
                        f"{prompt.n_tokens} (chat template changed?); log: {paths.relative(log_path)}")
    kv = logparse.kv_cache(log)
    metrics = {
        "prompt_tokens": n_prompt, "length_target": prompt.length,
        "depth": prompt.depth, "depth_tokens": prompt.depth_tokens, "depth_chars": prompt.depth_chars,
        "needle_tokens": list(prompt.needle_tokens), "haystack_tokens": list(prompt.haystack_tokens),
        "haystack_chars": prompt.haystack_chars, "needle_char": prompt.needle_char,
        "city": prompt.city, "needle": prompt.needle, "question": prompt.question, "answer": prompt.answer,
        "prompt_sha256": prompt.sha256, "generated": generated, "stop": stop,
        "correct": is_correct(generated, prompt.answer),
        "kv_mib": kv.mib, "kv_types": [kv.k_type, kv.v_type], "flash_attn": logparse.flash_attn(log),
        "hadamard_rotation": {"k": kv.rot_k, "v": kv.rot_v}, "wall_s": wall, **timing,
    }
    if stats_path is not None:
        if not stats_path.exists():
            raise NiahError(f"{name}: the hook was on but wrote no ELASTICKV_STATS file (no pass ran)")
        metrics |= hook_metrics(stats_path, prompt, n_prompt, resolved)
        if metrics["haystack_covered_before_answer"] != 1.0:
            raise NiahError(f"{name}: the hook's passes before the answer covered only "
                            f"{metrics['haystack_covered_before_answer']} of the haystack (pass positions "
                            f"{metrics['pass_pos_max']}, prompt {n_prompt} tokens); see SPEC §2")
    else:
        metrics |= {"passes": 0, "passes_before_answer": 0, "sparsity_k_all": 0.0, "sparsity_v_all": 0.0,
                    "nominal": 1.0}
    _, m = models.entry(model)
    sums = paths.ROOT / cfg["haystack_dir"] / "SHA256SUMS"
    rec = {
        "schema_version": 1, "kind": "niah", "name": name, "started": started, "finished": results.now(),
        "command": cmd, "env": env, "elastickv": resolved, "settings": settings, "git": results.git_info(),
        "upstream": results.upstream_info(patched=True),
        "build": {"tree": paths.relative(paths.LLAMA_SRC), "variant": cfg["variant"], "binary": cmd[0]},
        "model": {"name": model, "file": paths.relative(paths.MODELS / m["file"]), "sha256": m["sha256"]},
        "data": {"file": paths.relative(sums), "sha256": pypi.sha256_of(sums)},
        "device": results.device_info(), "metrics": metrics, "log": paths.relative(log_path),
        **({"transcript": paths.relative(transcript_path)} if runner == "cli" else {}),
    }
    results.validate(rec)
    results.write_json_atomic(out_dir / f"{name}.json", rec)
    return rec


# --------------------------------------------------------------------------------------------- grid

CELL_KEYS = ("prompt_tokens", "depth_tokens", "needle_tokens", "answer", "generated", "stop", "correct", "passes",
             "passes_before_answer", "last_pass_pos_before_answer", "needle_in_sink",
             "needle_thresholded_before_answer", "sparsity_k_all", "sparsity_v_all", "nominal", "at_answer",
             "wall_s")


def grid_data(cfg: dict, model: str, lengths: list[int], recs: dict) -> dict:
    rows = [r["name"] for r in cfg["rows"]]
    cells, scores, grid = [], {}, {}
    for row in rows:
        grid[row] = [[recs[(L, d, row)]["metrics"]["correct"] for d in cfg["depths"]] for L in lengths]
        per_len = {str(L): sum(g) for L, g in zip(lengths, grid[row])}
        per_depth = {f"{d:g}": sum(grid[row][i][j] for i in range(len(lengths))) for j, d in enumerate(cfg["depths"])}
        scores[row] = {"correct": sum(per_len.values()), "total": len(lengths) * len(cfg["depths"]),
                       "per_length": per_len, "per_depth": per_depth}
    for L in lengths:
        for d in cfg["depths"]:
            for row in rows:
                r = recs[(L, d, row)]
                ns, ne = r["metrics"]["needle_tokens"]
                sink = r["elastickv"]["sink"] if r["elastickv"]["enabled"] else None
                cells.append({"length": L, "depth": d, "row": row,
                              **{k: r["metrics"].get(k) for k in CELL_KEYS},
                              "needle_tokens_in_sink": None if sink is None else max(0, min(ne, sink) - ns),
                              "record": paths.relative(paths.ROOT / r["log"]).removesuffix(".log") + ".json",
                              "log": r["log"]})
    wall = {row: sum(c["wall_s"] for c in cells if c["row"] == row) for row in rows}
    return {"model": model, "lengths": lengths, "depths": cfg["depths"], "rows": rows, "scores": scores,
            "grid": grid, "grid_axes": "grid[row][length index][depth index] = correct", "wall_s": wall,
            "cells": cells}


def run_model(cfg: dict, model: str, force: bool = False) -> dict:
    lengths = (cfg["lengths"] or {}).get(model)
    if not lengths:
        raise config.ConfigError(f"no lengths for {model}: add `{model}: [...]` under `lengths`")
    e = cfg["evict_every"]
    for L in lengths:
        if L % e:
            raise config.ConfigError(f"length {L} is not a multiple of evict_every ({e}): the last pass before the "
                                     "answer would not cover the end of the haystack")
    if not cfg["rows"]:
        raise config.ConfigError("no rows to run")
    haystack = load_haystack(cfg["haystack_dir"])
    sums_sha = pypi.sha256_of(paths.ROOT / cfg["haystack_dir"] / "SHA256SUMS")
    out_dir = paths.ROOT / cfg["runs_dir"] / model
    tok = None
    recs = {}
    n_cells = len(lengths) * len(cfg["depths"]) * len(cfg["rows"])
    try:
        with progress_bar(n_cells, f"{cfg['artifact']} {model}") as bar:
            for L in lengths:
                for d in cfg["depths"]:
                    todo = []
                    for row in cfg["rows"]:
                        s = cell_settings(cfg, model, L, d, row, sums_sha)
                        old = check_existing(out_dir / f"{cell_name(L, d, row['name'])}.json", s, force)
                        if old is not None:
                            recs[(L, d, row["name"])] = old
                            bar.update()
                        else:
                            todo.append((row, s))
                    if not todo:
                        continue
                    tok = tok or Tokenizer(model, cfg["variant"])
                    prompt = build_prompt(tok, haystack, cfg, L, d)
                    for row, s in todo:
                        recs[(L, d, row["name"])] = run_cell(cfg, model, prompt, row, s, out_dir)
                        bar.update()
    finally:
        if tok is not None:
            tok.close()
    data = grid_data(cfg, model, lengths, recs)
    sources = [out_dir / f"{cell_name(L, d, r['name'])}.json"
               for L in lengths for d in cfg["depths"] for r in cfg["rows"]]
    notes = ("Needle-in-a-haystack, exact match of the needle's 7-digit number in the greedy answer (digit-group "
             "separators removed). Prompt: the model's chat template (llama-completion --jinja -cnv -st), "
             "instruction, Paul Graham essays with the needle on the sentence boundary nearest to the depth, "
             "question. Prompt tokens in [L, L + length_tolerance], -b = -ub = evict_every, so the hook's last pass "
             "before the answer covers the whole haystack (per cell: passes_before_answer, "
             "needle_thresholded_before_answer: false when the needle starts in the SINK positions, which are never "
             "thresholded; needle_tokens_in_sink: how many of its tokens lie there). Sparsity over "
             "all cells of the final cache, sinks included; at_answer: after the last pass before the answer. "
             "Zeroing in a dense cache saves no resident memory.")
    cfg_m = dict(cfg, models=[model], lengths={model: lengths})
    if cfg_m["runner"] == "completion":
        del cfg_m["runner"]  # the default: aggregates written before runners existed stay valid
    agg = results.aggregate(cfg["artifact"], SCRIPT, cfg_m, data, sources, notes)
    results.write_aggregate(paths.ROOT / cfg["runs_dir"] / f"{model}.json", agg, force=force)
    return agg


def markdown(agg: dict) -> str:
    d = agg["data"]
    rows = d["rows"]
    lines = [f"{d['model']}: correct of {len(d['depths'])} depths per length",
             "| length | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for L in d["lengths"]:
        lines.append(f"| {L} | " + " | ".join(str(d["scores"][r]["per_length"][str(L)]) for r in rows) + " |")
    lines.append("| all | " + " | ".join(f"{d['scores'][r]['correct']}/{d['scores'][r]['total']}" for r in rows) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = startup.driver_parser(__doc__, "table3_niah")
    ap.add_argument("--runner", choices=sorted(RUNNERS),
                    help="the llama.cpp tool that answers the cells (default: the config's runner, completion)")
    args = startup.parse_args(ap, argv)
    try:
        cfg = config.load(args.config, DEFAULTS, args.overrides + ([f"runner={args.runner}"] if args.runner else []))
        if cfg["runner"] not in RUNNERS:
            raise config.ConfigError(f"runner {cfg['runner']!r}: one of {', '.join(sorted(RUNNERS))}")
        for model in cfg["models"]:
            models.entry(model)  # unknown names fail before anything runs
        aggs = [run_model(cfg, model, force=args.force) for model in cfg["models"]]
    except startup.driver_errors(NiahError, logparse.LogParseError) as e:
        return startup.fail(__file__, e)
    for agg in aggs:
        print(markdown(agg))
        print(f"f5_niah: {cfg['runs_dir']}/{agg['data']['model']}.json written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
