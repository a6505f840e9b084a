# SPDX-License-Identifier: Apache-2.0
"""llama-perplexity runs with provenance: one JSON record and one raw log per run.

The measurement follows SPEC.md §2: ``-b`` and ``-ub`` equal EVICT_EVERY so that every ubatch attends to a
cache the hook has already sparsified, and KL divergence / top-1 agreement are taken against the logits of
the unmodified f16 model (``--kl-divergence-base``, cached in build/cache/kld, never in results/).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import envvars, logparse, models, paths, pypi, results, stats, tools

#: bits per stored value of llama.cpp cache types (32-value blocks: 2-byte scale + codes)
BITS_PER_VALUE = {"f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q5_1": 6.0, "q5_0": 5.5, "q4_1": 5.0,
                  "q4_0": 4.5, "iq4_nl": 4.5}


@dataclass
class PplSettings:
    """What a perplexity run measures; equal settings mean an existing record can be reused."""

    model: str
    data: str  # path relative to the repository root
    ctx: int = 512
    batch: int = 64  # -b = -ub, equal to ELASTICKV_EVICT_EVERY
    chunks: int | None = 10  # None: the whole file
    flash_attn: str = "on"
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    threads: int = 2
    variant: str = "cpu"
    hook: dict[str, str] = field(default_factory=dict)  # ELASTICKV_* (without STATS, which the runner sets)
    extra_args: list[str] = field(default_factory=list)


def kld_base_path(s: PplSettings) -> Path:
    """Where the base logits of these settings live (independent of hook and cache type). Another build than the
    default CPU one (CUDA, a fixed instruction set) computes its own: the logits differ in the last bits."""
    data_sha = pypi.sha256_of(paths.ROOT / s.data)[:12]
    chunks = "all" if s.chunks is None else str(s.chunks)
    build = "" if s.variant == "cpu" else f"-{s.variant}"
    return paths.CACHE / "kld" / f"{s.model}-{data_sha}-c{s.ctx}-b{s.batch}-n{chunks}-fa{s.flash_attn}{build}.kld"


def _command(s: PplSettings, model_path: Path, kld: str | None, base: Path | None) -> list[str]:
    binary = tools.require_binary(paths.binary("llama-perplexity", variant=s.variant))
    cmd = [paths.relative(binary), "-m", paths.relative(model_path), "-c", str(s.ctx), "-b", str(s.batch),
           "-ub", str(s.batch), "-t", str(s.threads), "-fa", s.flash_attn, "-ctk", s.cache_type_k,
           "-ctv", s.cache_type_v, "-lv", "4"]
    if s.chunks is not None:
        cmd += ["--chunks", str(s.chunks)]
    if kld == "compare":
        cmd += ["--kl-divergence-base", paths.relative(base), "--kl-divergence"]
    else:
        cmd += ["-f", s.data]
        if kld == "base":
            cmd += ["--kl-divergence-base", paths.relative(base)]
    return cmd + list(s.extra_args)


def resident_ratio(kv: logparse.KvCacheInfo, ctx: logparse.ContextInfo) -> float:
    """The f16 bytes of a cache holding the whole logical context over the real KV bytes of the run:
    (K f16-equivalent + V f16-equivalent) * (logical cells / allocated cells) / (K + V), with n_ctx logical cells
    (n_ctx_seq per stream) against the size line's cells per stream times its streams. 1.00 for a dense f16
    cache of the full context; ELASTICKV_KV_CELLS (fewer cells than positions) raises it, quantized types too."""
    f16_mib = kv.k_mib * 16.0 / BITS_PER_VALUE[kv.k_type] + kv.v_mib * 16.0 / BITS_PER_VALUE[kv.v_type]
    return f16_mib * (ctx.n_ctx / (kv.cells * kv.streams)) / (kv.k_mib + kv.v_mib)


def log_metrics(text: str, kld: str | None) -> dict:
    """The metrics a llama-perplexity log holds: KV cache size, types, rotation and resident ratio, flash
    attention, the real memory of the cache against the logical context (cells, buffers, the hook's eviction
    state), and the PPL (with ``kld`` "compare", the whole KL-divergence block). Everything is read from the
    log, nothing from the hook's settings."""
    kv = logparse.kv_cache(text)
    ctx = logparse.context(text)
    state = logparse.elastickv_eviction_state(text)
    metrics: dict = {
        "kv_mib": kv.mib,
        "kv_types": [kv.k_type, kv.v_type],
        "hadamard_rotation": {"k": kv.rot_k, "v": kv.rot_v},
        "flash_attn": logparse.flash_attn(text),
        "resident": resident_ratio(kv, ctx),
        "kv_real_mib": kv.mib,
        "kv_cells": kv.cells,
        "n_ctx": ctx.n_ctx,
        "kv_bytes_per_token": kv.mib * 2**20 / ctx.n_ctx,
        "kv_buffer_mib": logparse.kv_buffer_mib(text),
        "hook_state_mib": state["mib"] if state else None,
    }
    if kld == "compare":
        k = logparse.kld_stats(text)
        metrics |= {
            "ppl": {"value": k.ppl[0], "stderr": k.ppl[1]},
            "ppl_base": {"value": k.ppl_base[0], "stderr": k.ppl_base[1]},
            "ln_ppl_ratio": {"value": k.ln_ratio[0], "stderr": k.ln_ratio[1]},
            "kld": {"value": k.kld[0], "stderr": k.kld[1]},
            "kld_quantiles": k.kld_quantiles,
            "same_top_p_pct": {"value": k.same_top_p[0], "stderr": k.same_top_p[1]},
            "rms_dp_pct": {"value": k.rms_dp[0], "stderr": k.rms_dp[1]},
            "chunks_scored": len(k.per_chunk),
        }
    else:
        v, e = logparse.final_ppl(text)
        metrics |= {"ppl": {"value": v, "stderr": e}, "chunks_scored": len(logparse.chunk_ppls(text))}
    return metrics


#: the figures of stats.summarize a record keeps (ElasticKV)
SUMMARY_KEYS = ("sparsity_k_all", "sparsity_v_all", "sparsity_k_region", "sparsity_v_region", "nominal", "bitmap",
                "n_states", "n_passes", "per_layer", "hist")


def hook_metrics(records: list[dict] | None, policy: str) -> dict:
    """The hook's figures from the records of its ELASTICKV_STATS file (``records``: the non-config records
    of stats.read; None when the hook was off): stats.summarize for ElasticKV, stats.summarize_policy for a
    baseline policy, and no sparsity with the hook off."""
    if records is None:
        return {"sparsity_k_all": 0.0, "sparsity_v_all": 0.0, "nominal": 1.0, "bitmap": None}
    if policy != "elastickv":
        return stats.summarize_policy(records)
    summ = stats.summarize(records)
    return {k: summ[k] for k in SUMMARY_KEYS}


#: how two runs' headline metrics are compared (scripts/bench/cross_isa.py, tests/test_reproduce.py): "rel" is
#: |a/b - 1|, "abs" is |a - b|
COMPARED = {"ppl": "rel", "ln_ppl_ratio": "abs", "kld": "rel", "same_top_p_pct": "abs"}


def metric_values(metrics: dict) -> dict:
    """The values of the COMPARED metrics that a record's metrics (or :func:`log_metrics`) hold."""
    return {k: metrics[k]["value"] for k in COMPARED if isinstance(metrics.get(k), dict)}


def deviation(a: dict, b: dict) -> dict:
    """How far the metric values ``a`` are from ``b``, for the COMPARED metrics both hold (COMPARED says how)."""
    return {k: abs(a[k] / b[k] - 1.0) if how == "rel" else abs(a[k] - b[k])
            for k, how in COMPARED.items() if k in a and k in b}


class RecordMismatch(RuntimeError):
    """A record exists for this run name with other settings; pass force to replace it."""


def run(name: str, s: PplSettings, out_dir: Path, kld: str | None = None, force: bool = False) -> dict:
    """Runs (or reuses) one perplexity measurement and returns its record.

    ``kld``: None (plain perplexity), "base" (also save the base logits) or "compare" (KL divergence
    against the base logits of the same settings, which must exist).
    """
    out_dir = Path(out_dir)
    rec_path = out_dir / f"{name}.json"
    settings = asdict(s) | {"kld": kld}
    if rec_path.exists() and not force:
        old = json.loads(rec_path.read_text())
        if old.get("settings") == settings:
            return old  # finished before: resume without redoing it
        raise RecordMismatch(f"{paths.relative(rec_path)} holds a run with other settings; use --force to replace it")

    model_path = models.fetch(s.model)
    base = kld_base_path(s) if kld else None
    if kld == "base":
        base.parent.mkdir(parents=True, exist_ok=True)
    if kld == "compare" and not base.exists():
        raise FileNotFoundError(f"no base logits at {paths.relative(base)}; run the baseline first")

    hook_env = dict(s.hook)
    stats_path = None
    if hook_env.get("ELASTICKV") == "1":
        stats_path = out_dir / f"{name}.stats.jsonl"
        stats_path.unlink(missing_ok=True)  # records are appended by the hook
        for ext in (".gz", ".xz"):
            stats_path.with_name(stats_path.name + ext).unlink(missing_ok=True)
        hook_env["ELASTICKV_STATS"] = paths.relative(stats_path)
    resolved = envvars.resolve(hook_env)

    cmd = _command(s, model_path, kld, base)
    log_path = out_dir / f"{name}.log"
    started = results.now()
    _, text, peak_rss_kib = tools.run_measured(cmd, log_path, hook_env)

    metrics = log_metrics(text, kld)
    if stats_path is not None:
        _, recs = stats.read(stats_path)
        metrics |= hook_metrics(recs, resolved["policy"])
        metrics["stats"] = paths.relative(stats.compress(stats_path))
    else:
        metrics |= hook_metrics(None, resolved["policy"])
    metrics["peak_rss_mib"] = peak_rss_kib / 1024  # measured, not in the log

    record = results.record("perplexity", name, started, cmd, hook_env, resolved, settings, s.variant, cmd[0], s.model,
                            paths.ROOT / s.data, metrics, log_path)
    results.write_json_atomic(rec_path, record)
    return record
