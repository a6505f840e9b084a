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
    """Per-chunk values derived from llama-perplexity's running means (scripts/eval/ppl_tables.py) average back
    to the printed totals of a recorded 10-chunk KLD run."""
    import math
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "scripts" / "eval"))
    import ppl_tables

    assert ppl_tables.per_chunk_deltas([2.0, 3.0, 3.0]) == [2.0, 4.0, 3.0]
    k = logparse.kld_stats(read("perplexity_kld_sink4_10chunks.log"))
    assert len(k.per_chunk) == 10
    nll = ppl_tables.per_chunk_deltas([math.log(c["ppl"]) for c in k.per_chunk])
    kld = ppl_tables.per_chunk_deltas([c["kld"] for c in k.per_chunk])
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
