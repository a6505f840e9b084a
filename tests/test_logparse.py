# SPDX-License-Identifier: Apache-2.0
"""Log parsers against recorded llama.cpp logs (tests/data/logs/, produced by the pinned build)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from elastickv import logparse

LOGS = Path(__file__).parent / "data" / "logs"


def read(name: str) -> str:
    return (LOGS / name).read_text()


def test_final_ppl_and_chunks():
    text = read("perplexity_sweet_verbose.log")
    assert logparse.final_ppl(text) == (21.5610, 3.15841)
    assert logparse.chunk_ppls(text) == [13.3264, 21.5610]


def test_chunks_run_and_tokens_scored():
    assert logparse.chunks_run(read("perplexity_kld_base_f16.log")) == (2, 512)  # plain perplexity
    assert logparse.chunks_run(read("perplexity_kld_sink4_10chunks.log")) == (10, 512)  # KL divergence
    assert logparse.chunks_run(read("perplexity_kld_hookoff_1chunk_amd_epyc.log")) == (1, 512)
    assert logparse.tokens_scored_per_chunk(512) == 255 and logparse.tokens_scored_per_chunk(4096) == 2047


def test_kld_stats():
    k = logparse.kld_stats(read("perplexity_kld_sweet.log"))
    assert k.ppl == (21.561016, 3.158408)
    assert k.ppl_base == (21.358387, 3.110152)
    assert k.kld == (0.011942, 0.000733)
    assert k.same_top_p == (95.490, 0.920)
    assert k.rms_dp == (2.432, 0.151)
    assert k.kld_quantiles["Maximum"] == 0.200889 and k.kld_quantiles["99.9%"] == 0.158436
    # every percentile line, the right-aligned ones (" 5.0%   KLD:") too
    assert list(k.kld_quantiles) == ["Maximum", "99.9%", "99.0%", "95.0%", "90.0%", "Median", "10.0%", "5.0%",
                                     "1.0%", "0.1%", "Minimum"]
    assert [c["chunk"] for c in k.per_chunk] == [1, 2]
    assert k.per_chunk[0]["kld"] == 0.01204 and k.per_chunk[1]["same_top_p"] == 95.490


def test_kv_cache_line():
    kv = logparse.kv_cache(read("perplexity_kld_base_f16.log"))
    assert (kv.mib, kv.cells, kv.layers, kv.k_type, kv.v_type) == (11.25, 512, 30, "f16", "f16")
    assert kv.rot_k is False and kv.rot_v is False
    q = logparse.kv_cache(read("perplexity_kld_q8_0.log"))
    assert (q.k_type, q.v_type) == ("q8_0", "q8_0") and q.rot_k is True
    assert logparse.flash_attn(read("perplexity_kld_base_f16.log")) is True


def test_hook_lines():
    text = read("perplexity_sweet_verbose.log")
    echo = logparse.elastickv_echo(text)
    assert echo["preset"] == "sweet" and echo["mode"] == "full" and echo["scale_k"] == "0.45"
    passes = logparse.elastickv_passes(text)
    assert len(passes) == 14
    assert passes[0] == {"pass": 0, "seq": 0, "epoch": 0, "pos_max": 127, "mode": "full", "k_zero_pct": 17.2,
                         "v_zero_pct": 17.0, "nominal": 1.207, "ms": 5.24}
    assert passes[7]["epoch"] == 1  # the second chunk clears the cache: a new epoch
    assert logparse.elastickv_echo(read("perplexity_kld_base_f16.log")) is None


def test_hook_error():
    msg = logparse.elastickv_error(read("perplexity_error_sink.log"))
    assert msg.startswith("elastickv: ELASTICKV_SINK='100000' is larger than the context")


def test_missing_line_is_an_error():
    with pytest.raises(logparse.LogParseError, match="final perplexity"):
        logparse.final_ppl(read("perplexity_error_sink.log"))


def test_per_chunk_values_from_running_means():
    """Per-chunk values derived from llama-perplexity's running means (logparse.per_chunk_deltas) average back
    to the printed totals of a recorded 10-chunk KLD run."""
    import math

    assert logparse.per_chunk_deltas([2.0, 3.0, 3.0]) == [2.0, 4.0, 3.0]
    k = logparse.kld_stats(read("perplexity_kld_sink4_10chunks.log"))
    assert len(k.per_chunk) == 10
    nll = logparse.per_chunk_deltas([math.log(c["ppl"]) for c in k.per_chunk])
    kld = logparse.per_chunk_deltas([c["kld"] for c in k.per_chunk])
    assert math.exp(sum(nll) / 10) == pytest.approx(k.ppl[0], rel=1e-4)
    assert sum(kld) / 10 == pytest.approx(k.kld[0], abs=1e-4)
    assert all(x > 0 for x in kld)  # every chunk's own KLD is positive


@pytest.mark.parametrize("text, want", [
    ("nan", math.nan), ("-nan", math.nan), ("+nan", math.nan), ("NaN", math.nan), ("-nan(ind)", math.nan),
    ("nan(snan)", math.nan), ("-1.#IND", math.nan), ("1.#QNAN", math.nan),
    ("inf", math.inf), ("-inf", -math.inf), ("+inf", math.inf), ("INF", math.inf), ("Infinity", math.inf),
    ("-infinity", -math.inf), ("1.#INF", math.inf), ("-1.#INF", -math.inf),
    ("13.0198", 13.0198), ("-0.000002", -0.000002), ("1e-05", 1e-05), (".5", 0.5), ("-3", -3.0),
])
def test_every_spelling_of_nan_and_infinity(text, want):
    """glibc prints nan/-nan/inf/-inf, MSVC -nan(ind), old MSVC 1.#INF/-1.#IND: every one is a number."""
    import re

    m = re.fullmatch(logparse._NUM, text)
    assert m, text
    got = logparse.number(m.group(1))
    assert (math.isnan(got) and math.isnan(want)) or got == want, (text, got)
    # inside a statistics line, as llama-perplexity prints it
    line = f"Mean ln(PPL(Q)/PPL(base))     :  0.012345 ±  {text:>10}"
    assert re.search(rf"^Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*{logparse._NUM}\s*±\s*{logparse._NUM}", line)


def test_one_chunk_log_from_an_amd_machine():
    """A one-chunk KLD run recorded on an AMD EPYC (AVX2) prints its uncertainties as `-nan`: every number of the
    statistics block and the chunk's row is read (the row too, so the chunk is counted as scored)."""
    k = logparse.kld_stats(read("perplexity_kld_hookoff_1chunk_amd_epyc.log"))
    assert k.ppl == (13.019846, 2.513127) and k.ppl_base == (13.019866, 2.51313)
    assert k.ln_ratio[0] == -0.000002 and math.isnan(k.ln_ratio[1])
    assert k.kld == (-0.000001, 0.000001)
    assert k.same_top_p == (100.0, 0.0) and k.rms_dp == (0.0, 0.0)
    assert k.kld_quantiles["Maximum"] == 0.000038 and k.kld_quantiles["Minimum"] == -0.000042
    assert len(k.per_chunk) == 1
    row = k.per_chunk[0]
    assert (row["chunk"], row["ppl"], row["ppl_err"], row["kld"], row["same_top_p"]) == (1, 13.0198, 2.5131, -0.0, 100.0)


def test_context_and_kv_buffers():
    """The logical context (n_ctx, n_ctx_seq; not the 'n_ctx_seq (512) < n_ctx_train' line) and the KV buffers of
    a recorded log; the size line's n_seq_max/n_stream."""
    text = read("perplexity_kld_base_f16.log")
    ctx = logparse.context(text)
    assert (ctx.n_ctx, ctx.n_ctx_seq) == (512, 512)
    assert logparse.kv_buffer_mib(text) == 11.25
    kv = logparse.kv_cache(text)
    assert (kv.seqs, kv.streams) == (1, 1)
    assert logparse.elastickv_eviction_state(text) is None and logparse.elastickv_policy(text) is None
    with pytest.raises(logparse.LogParseError, match="KV buffer"):
        logparse.kv_buffer_mib(read("perplexity_error_sink.log"))


#: lines of the hook with the physical cap and of llama.cpp with one buffer per device and four streams
CAPPED = """\
0.00.338.089 I llama_context: n_ctx                 = 2048
0.00.338.090 I llama_context: n_ctx_seq             = 512
0.00.338.101 I llama_context: n_ctx_seq (512) < n_ctx_train (8192) -- the full capacity of the model will not be utilized
0.00.338.263 I llama_kv_cache:      CUDA0 KV buffer size =    12.00 MiB
0.00.338.264 I llama_kv_cache:        CPU KV buffer size =    10.50 MiB
0.00.344.848 I llama_kv_cache: size =   22.50 MiB (   256 cells,  30 layers,  4/4 seqs), K (f16):   11.25 MiB, V (f16):   11.25 MiB
0.00.350.000 W elastickv: policy=h2o budget=0.250000 (fraction) recent=auto heavy_ratio=0.8 seed=42 pyramid_beta=20 scope=shared free=1 kv_cells=256 (the ElasticKV thresholds are not used)
0.00.350.001 W elastickv: eviction state 0.47 MiB on the KV devices (bias, score, keep), 256 cells per stream of 512 logical
"""


def test_hook_lines_of_the_physical_cap():
    kv = logparse.kv_cache(CAPPED)
    assert (kv.cells, kv.seqs, kv.streams, kv.mib) == (256, 4, 4, 22.5)
    ctx = logparse.context(CAPPED)
    assert (ctx.n_ctx, ctx.n_ctx_seq) == (2048, 512)
    assert logparse.kv_buffer_mib(CAPPED) == 22.5  # CUDA0 + CPU
    assert logparse.elastickv_eviction_state(CAPPED) == {"mib": 0.47, "scores": True, "cells": 256, "n_ctx_seq": 512}
    no_score = "W elastickv: eviction state 0.12 MiB on the KV devices (bias, keep), 384 cells per stream of 1024 logical"
    assert logparse.elastickv_eviction_state(no_score) == {"mib": 0.12, "scores": False, "cells": 384, "n_ctx_seq": 1024}
    assert logparse.elastickv_policy(CAPPED) == {"policy": "h2o", "budget": 0.25, "recent": "auto", "heavy_ratio": 0.8,
                                                 "seed": 42, "pyramid_beta": 20.0, "scope": "shared", "free": True,
                                                 "kv_cells": 256}


def test_policy_echo_before_the_cap():
    """The baseline echo of the archived runs (no scope, free, kv_cells) and a budget in cells."""
    old = ("0.00.302.543 W elastickv: policy=streaming budget=0.500000 (fraction) recent=auto heavy_ratio=0.8 seed=42 "
           "pyramid_beta=20 (the ElasticKV thresholds are not used)")
    assert logparse.elastickv_policy(old) == {"policy": "streaming", "budget": 0.5, "recent": "auto", "heavy_ratio": 0.8,
                                              "seed": 42, "pyramid_beta": 20.0}
    cells = ("W elastickv: policy=random_tokens budget=300 cells recent=16 heavy_ratio=0.5 seed=7 pyramid_beta=20 "
             "scope=head free=0 kv_cells=0 (the ElasticKV thresholds are not used)")
    p = logparse.elastickv_policy(cells)
    assert (p["budget"], p["recent"], p["seed"], p["scope"], p["free"], p["kv_cells"]) == (300, 16, 7, "head", False, 0)


def test_log_metrics_of_a_capped_cache():
    """ppl.log_metrics reads the real memory from the log: 4 streams of 256 cells for a logical context of 2048
    hold half of it, so an f16 cache is resident 2.0; the hook's state is its own line."""
    from elastickv import ppl

    text = read("perplexity_kld_base_f16.log")
    start, end = text.index("0.00.338.089 I llama_context: n_ctx  "), text.index("0.00.344.886 I llama_kv_cache: attn_rot")
    m = ppl.log_metrics(text[:start] + CAPPED + text[end:], None)
    assert m["resident"] == 2.0 and m["kv_mib"] == m["kv_real_mib"] == 22.5
    assert (m["kv_cells"], m["n_ctx"], m["kv_buffer_mib"], m["hook_state_mib"]) == (256, 2048, 22.5, 0.47)
    assert m["kv_bytes_per_token"] == 22.5 * 2**20 / 2048
    plain = ppl.log_metrics(text, None)  # the full context: resident as before the cap
    assert (plain["resident"], plain["kv_cells"], plain["n_ctx"], plain["hook_state_mib"]) == (1.0, 512, 512, None)
    assert plain["kv_bytes_per_token"] == 11.25 * 2**20 / 512
