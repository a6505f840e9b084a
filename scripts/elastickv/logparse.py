# SPDX-License-Identifier: Apache-2.0
"""Parsers for llama.cpp tool logs (pinned regexes, tested on recorded logs in tests/data/logs/).

llama-perplexity reports its results only as log lines, so the harness keeps the raw log of every run
and reads the numbers back from it with these functions. Run the tools with ``-lv 4`` so that the
library's information lines (KV cache size, flash attention, rotation) are in the log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: a number as C's printf writes it, with every spelling of NaN and infinity either sign may carry: glibc
#: ``nan``, ``-nan``, ``inf``, ``-inf``; MSVC ``-nan(ind)``, ``nan(snan)``, old MSVC ``1.#INF``, ``-1.#IND``,
#: ``1.#QNAN``; any case, ``infinity`` spelt out. One capture group; convert the capture with :func:`number`.
_NUM = (r"([-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?!\.?#)|\d+\.#(?:INF|IND|QNAN|SNAN)\d*"
        r"|(?i:nan)(?:\([\w]*\))?|(?i:inf(?:inity)?)))")
_NONFINITE = re.compile(r"([-+]?)(?:\d+\.#(INF|IND|QNAN|SNAN)\d*|(nan)(?:\(\w*\))?|(inf)(?:inity)?)", re.IGNORECASE)


def number(text: str) -> float:
    """The float a printed number stands for (``-nan(ind)`` -> nan, ``1.#INF`` -> inf, ``-inf`` -> -inf)."""
    m = _NONFINITE.fullmatch(text.strip())
    if not m:
        return float(text)
    sign = -1.0 if m.group(1) == "-" else 1.0
    if (m.group(2) or "").upper() == "INF" or m.group(4):
        return sign * float("inf")
    return float("nan")  # NaN's sign bit carries no meaning here


class LogParseError(ValueError):
    """An expected line is missing from a log: the run failed or the tool's output format changed."""


def _search(pattern: str, text: str, what: str) -> re.Match:
    m = re.search(pattern, text, flags=re.MULTILINE)
    if not m:
        raise LogParseError(f"no {what} in the log (pattern {pattern!r})")
    return m


def final_ppl(text: str) -> tuple[float, float]:
    """``Final estimate: PPL = x +/- e`` of a plain perplexity run."""
    m = _search(rf"Final estimate: PPL = {_NUM} \+/- {_NUM}", text, "final perplexity estimate")
    return number(m.group(1)), number(m.group(2))


def chunk_ppls(text: str) -> list[float]:
    """The running estimates ``[1]13.0665,[2]21.4582,`` (perplexity after each chunk)."""
    return [number(x) for x in re.findall(rf"\[\d+\]{_NUM},", text)]


def system_info(text: str) -> dict:
    """llama.cpp's ``system_info`` line: the threads and the CPU features the build compiled and uses
    (``{"n_threads": 2, "cpu": "SSE3 = 1 | ... | REPACK = 1"}``): equal features and threads mean the same
    arithmetic on the CPU."""
    m = _search(r"system_info: n_threads = (\d+) \(n_threads_batch = (\d+)\) / \d+ \| CPU : ([^\n]*?)\s*\|?\s*$", text,
                "system_info line")
    return {"n_threads": int(m.group(1)), "n_threads_batch": int(m.group(2)), "cpu": m.group(3).strip()}


def chunks_run(text: str) -> tuple[int, int]:
    """(chunks, n_ctx) that llama-perplexity ran: ``calculating perplexity over 10 chunks, n_ctx=512`` (plain) or
    ``kl_divergence: computing over 10 chunks, n_ctx=512`` (KL divergence)."""
    m = _search(r"(?:calculating perplexity|computing) over (\d+) chunks, n_ctx=(\d+)", text, "chunk count")
    return int(m.group(1)), int(m.group(2))


def tokens_scored_per_chunk(n_ctx: int) -> int:
    """Tokens llama-perplexity scores in a chunk of ``n_ctx``: the second half, less the last token
    (``n_ctx - 1 - n_ctx/2`` in tools/perplexity/perplexity.cpp)."""
    return n_ctx - 1 - n_ctx // 2


@dataclass
class KldStats:
    """The summary of a ``--kl-divergence`` run."""

    ppl: tuple[float, float]  # Mean PPL(Q) +/- error
    ppl_base: tuple[float, float]  # Mean PPL(base) +/- error
    ln_ratio: tuple[float, float]  # Mean ln(PPL(Q)/PPL(base))
    kld: tuple[float, float]  # Mean KLD +/- error
    kld_quantiles: dict[str, float] = field(default_factory=dict)  # "Maximum", "99.9%", ..., "Median", "Minimum"
    same_top_p: tuple[float, float] = (float("nan"), float("nan"))  # percent
    rms_dp: tuple[float, float] = (float("nan"), float("nan"))  # percent
    per_chunk: list[dict] = field(default_factory=list)


def per_chunk_deltas(running: list[float]) -> list[float]:
    """Per-chunk values from llama-perplexity's running means (the rows of ``KldStats.per_chunk``; chunks of equal
    token counts): x_i = i·m_i − (i−1)·m_{i−1}."""
    out, prev = [], 0.0
    for i, m in enumerate(running, start=1):
        out.append(i * m - (i - 1) * prev)
        prev = m
    return out


def kld_stats(text: str) -> KldStats:
    """Parses the statistics block that ``llama-perplexity --kl-divergence`` prints at the end."""
    pm = rf"{_NUM}\s*±\s*{_NUM}"
    ppl = _search(rf"^Mean PPL\(Q\)\s*:\s*{pm}", text, "Mean PPL(Q)")
    base = _search(rf"^Mean PPL\(base\)\s*:\s*{pm}", text, "Mean PPL(base)")
    ln = _search(rf"^Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*{pm}", text, "Mean ln(PPL(Q)/PPL(base))")
    kld = _search(rf"^Mean\s+KLD:\s*{pm}", text, "Mean KLD")
    top = _search(rf"^Same top p:\s*{pm}\s*%", text, "Same top p")
    rms = _search(rf"^RMS Δp\s*:\s*{pm}\s*%", text, "RMS Δp")
    q = {}
    # llama-perplexity right-aligns the percentiles: " 5.0%   KLD:" starts with a space
    for name, value in re.findall(rf"^\s*(Maximum|Minimum|Median|[\d.]+%)\s+KLD:\s*{_NUM}", text, flags=re.MULTILINE):
        q[name] = number(value)
    chunks = []
    row = re.compile(rf"^\s*(\d+)\s+{_NUM}\s*±\s*{_NUM}\s+{_NUM}\s*±\s*{_NUM}\s+{_NUM}\s*±\s*{_NUM}\s+"
                     rf"{_NUM}\s*±\s*{_NUM}\s*%\s+{_NUM}\s*±\s*{_NUM}\s*%", re.MULTILINE)
    for m in row.finditer(text):
        v = [number(x) for x in m.groups()[1:]]
        chunks.append({"chunk": int(m.group(1)), "ppl": v[0], "ppl_err": v[1], "ln_ratio": v[2], "kld": v[4],
                       "kld_err": v[5], "rms_dp": v[6], "same_top_p": v[8]})

    def pair(m: re.Match) -> tuple[float, float]:
        return number(m.group(1)), number(m.group(2))

    return KldStats(ppl=pair(ppl), ppl_base=pair(base), ln_ratio=pair(ln), kld=pair(kld), kld_quantiles=q,
                    same_top_p=pair(top), rms_dp=pair(rms), per_chunk=chunks)


@dataclass
class KvCacheInfo:
    """``llama_kv_cache: size = ...`` and the rotation lines of a ``-lv 4`` log."""

    mib: float  # total resident KV bytes / 2**20 (all streams)
    k_type: str
    k_mib: float
    v_type: str
    v_mib: float
    cells: int  # allocated per stream: n_ctx_seq, or fewer under ELASTICKV_KV_CELLS
    layers: int
    seqs: int  # n_seq_max
    streams: int  # 1 with a unified cache, else n_seq_max
    rot_k: bool | None
    rot_v: bool | None


def kv_cache(text: str) -> KvCacheInfo:
    """The first ``llama_kv_cache: size = 11.25 MiB (512 cells, 30 layers, 1/1 seqs), K (f16): ..., V (f16): ...``
    line (llama_kv_cache prints ``n_seq_max/n_stream seqs``) and the rotation lines."""
    m = _search(rf"llama_kv_cache: size =\s*{_NUM} MiB \(\s*(\d+) cells,\s*(\d+) layers,\s*(\d+)/(\d+) seqs\),\s*"
                rf"K \((\w+)\):\s*{_NUM} MiB,\s*V \((\w+)\):\s*{_NUM} MiB", text, "KV cache size (run with -lv 4)")
    rk = re.search(r"attn_rot_k = (\d)", text)
    rv = re.search(r"attn_rot_v = (\d)", text)
    return KvCacheInfo(mib=number(m.group(1)), cells=int(m.group(2)), layers=int(m.group(3)), seqs=int(m.group(4)),
                       streams=int(m.group(5)), k_type=m.group(6), k_mib=number(m.group(7)), v_type=m.group(8),
                       v_mib=number(m.group(9)), rot_k=bool(int(rk.group(1))) if rk else None,
                       rot_v=bool(int(rv.group(1))) if rv else None)


def kv_buffer_mib(text: str) -> float:
    """The sum of the ``llama_kv_cache:        CPU KV buffer size =    11.25 MiB`` lines (one per buffer type:
    CPU, CUDA0, ...): the bytes the KV cache allocated, / 2**20."""
    found = re.findall(rf"llama_kv_cache:\s+\S+ KV buffer size =\s*{_NUM} MiB", text)
    if not found:
        raise LogParseError("no KV buffer size line in the log (run with -lv 4)")
    return sum(number(x) for x in found)


@dataclass
class ContextInfo:
    """The logical context of a ``-lv 4`` log: what llama.cpp sizes positions and batches by, whatever cells
    the KV cache holds."""

    n_ctx: int  # all sequences
    n_ctx_seq: int  # per sequence (equal to n_ctx with a unified cache)


def context(text: str) -> ContextInfo:
    """``llama_context: n_ctx = 512`` and ``llama_context: n_ctx_seq = 512``."""
    n_ctx = _search(r"llama_context: n_ctx\s+=\s*(\d+)", text, "n_ctx line (run with -lv 4)")
    n_ctx_seq = _search(r"llama_context: n_ctx_seq\s+=\s*(\d+)", text, "n_ctx_seq line (run with -lv 4)")
    return ContextInfo(n_ctx=int(n_ctx.group(1)), n_ctx_seq=int(n_ctx_seq.group(1)))


def flash_attn(text: str) -> bool | None:
    m = re.search(r"llama_context: flash_attn\s*=\s*(\w+)", text)
    return None if not m else m.group(1) == "enabled"


def elastickv_echo(text: str) -> dict | None:
    """The hook's configuration echo (``elastickv: ELASTICKV=1 mode=... ``), or None when the hook was off."""
    m = re.search(r"elastickv: ELASTICKV=1 (.*)$", text, flags=re.MULTILINE)
    if not m:
        return None
    return dict(kv.split("=", 1) for kv in m.group(1).split() if "=" in kv)


_POLICY_ECHO = re.compile(
    r"elastickv: policy=(?P<policy>\w+) budget=(?:(?P<fraction>\S+) \(fraction\)|(?P<cells>\d+) cells) "
    r"recent=(?P<recent>\w+) heavy_ratio=(?P<heavy_ratio>\S+) seed=(?P<seed>\d+) pyramid_beta=(?P<pyramid_beta>\S+) "
    r"(?:scope=(?P<scope>\w+) free=(?P<free>[01]) kv_cells=(?P<kv_cells>\d+) )?"
    r"\(the ElasticKV thresholds are not used\)")


def elastickv_policy(text: str) -> dict | None:
    """The hook's baseline echo (``elastickv: policy=h2o budget=0.500000 (fraction) recent=auto ...``), or None
    without one (the hook off, or ELASTICKV_POLICY=elastickv). ``budget``: the fraction (float) or the cells (int).
    Logs of the hook with the physical cap add ``scope`` ("head"/"shared"), ``free`` (bool) and ``kv_cells`` (int,
    0: no cap) before "(the ElasticKV thresholds are not used)"; older logs lack the three keys."""
    m = _POLICY_ECHO.search(text)
    if not m:
        return None
    recent = m["recent"]
    out = {"policy": m["policy"], "budget": number(m["fraction"]) if m["fraction"] else int(m["cells"]),
           "recent": recent if recent == "auto" else int(recent), "heavy_ratio": number(m["heavy_ratio"]),
           "seed": int(m["seed"]), "pyramid_beta": number(m["pyramid_beta"])}
    if m["scope"] is not None:
        out |= {"scope": m["scope"], "free": m["free"] == "1", "kv_cells": int(m["kv_cells"])}
    return out


def elastickv_eviction_state(text: str) -> dict | None:
    """The token policies' line ``elastickv: eviction state 0.47 MiB on the KV devices (bias, score, keep), 384
    cells per stream of 512 logical`` (no bias under flash attention): ``mib`` (the hook's bias/score/keep
    tensors), ``scores`` (a score tensor is kept), ``cells`` (per stream) and ``n_ctx_seq`` (logical). None when absent (the hook off, ElasticKV or an
    element policy, or a log from before the physical cap)."""
    m = re.search(rf"elastickv: eviction state {_NUM} MiB on the KV devices \((?:bias, )?(score, )?keep\), "
                  rf"(\d+) cells per stream of (\d+) logical", text)
    if not m:
        return None
    return {"mib": number(m.group(1)), "scores": m.group(2) is not None, "cells": int(m.group(3)),
            "n_ctx_seq": int(m.group(4))}


def elastickv_passes(text: str) -> list[dict]:
    """The ``ELASTICKV_VERBOSE=1`` summary lines, one per pass and sequence."""
    pat = re.compile(rf"elastickv: pass (\d+) seq (\d+) epoch (\d+) pos_max (-?\d+) \((\w+)\): K {_NUM}% V {_NUM}% zero, "
                     rf"nominal {_NUM}x, {_NUM} ms")
    return [{"pass": int(a), "seq": int(b), "epoch": int(c), "pos_max": int(d), "mode": e, "k_zero_pct": number(f),
             "v_zero_pct": number(g), "nominal": number(h), "ms": number(i)} for a, b, c, d, e, f, g, h, i in pat.findall(text)]


def elastickv_error(text: str) -> str | None:
    """The hook's error message if context creation failed because of it."""
    m = re.search(r"failed to initialize the context: (elastickv: .*)$", text, flags=re.MULTILINE)
    return m.group(1) if m else None
