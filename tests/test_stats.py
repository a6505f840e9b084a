# SPDX-License-Identifier: Apache-2.0
"""stats.summarize_policy on synthetic ELASTICKV_STATS records of a token policy: the kept share of the logical
context from the evict records, and with the evict_pass records of the hook with cell freeing, the cells really
held (pure Python; the hook's own records are checked against its cache by the policy tests)."""

from __future__ import annotations

import json

import pytest

from elastickv import stats


def evict(pas: int, pos_max: int, layer: int, n: int, kept: int) -> dict:
    return {"record": "evict", "ctx": 0, "pass": pas, "seq": 0, "pos_max": pos_max, "layer": layer, "head": 0,
            "n": n, "budget": kept, "kept": kept}


def evict_pass(pas: int, pos_max: int, n: int, before: int, freed: int, union: int, used: int) -> dict:
    return {"record": "evict_pass", "ctx": 0, "pass": pas, "seq": 0, "pos_max": pos_max, "scope": "shared",
            "n_logical": n, "budget": union, "resident_before": before, "freed": freed,
            "resident_after": before - freed, "union_kept": union, "kv_size": 256, "used_after": used}


#: two chunks of 512 positions, passes at 255 and 511 in each (2 layers); the second chunk starts at pass 2
EVICT = [evict(0, 255, l, 256, 128) for l in (0, 1)] + [evict(1, 511, l, 512, 256) for l in (0, 1)] + \
        [evict(2, 255, l, 256, 128) for l in (0, 1)] + [evict(3, 511, l, 512, 128) for l in (0, 1)]
PASSES = [evict_pass(0, 255, 256, 256, 128, 128, 128), evict_pass(1, 511, 512, 384, 128, 256, 256),
          evict_pass(2, 255, 256, 256, 128, 128, 128), evict_pass(3, 511, 512, 256, 64, 192, 192)]


def test_without_evict_pass_records_the_summary_is_unchanged():
    s = stats.summarize_policy(EVICT)
    assert s["kept_cells_per_chunk"] == [0.5, 0.25] and s["kept_cells"] == pytest.approx(0.375)
    assert not {"resident_cells", "union_kept_cells", "freed_cells", "max_used_cells"} & set(s)


def test_cells_really_held_at_the_final_passes():
    s = stats.summarize_policy(EVICT + PASSES)
    assert {k: v for k, v in s.items() if k in stats.summarize_policy(EVICT)} == stats.summarize_policy(EVICT)
    assert s["resident_cells"] == pytest.approx((256 / 512 + 192 / 512) / 2)  # passes 1 and 3
    assert s["union_kept_cells"] == pytest.approx((256 / 512 + 192 / 512) / 2)
    assert s["freed_cells"] == 128 + 128 + 128 + 64  # every pass
    assert s["max_used_cells"] == 256


def test_tokens_evicted_per_chunk_at_the_final_passes():
    """Per chunk, the logical length less the kept cells at its last pass, mean over layers (passes 1 and 3)."""
    s = stats.summarize_policy(EVICT)
    assert s["evicted_tokens_per_chunk"] == [512 - 256, 512 - 128]


def test_pass_time_only_when_every_evict_pass_record_is_timed():
    """The hook's evict_pass "ms" (hooks since 2026-12-04) gives mean, median and total; a record without it (an
    older hook) gives none rather than a partial figure."""
    timed = [dict(r, ms=ms) for r, ms in zip(PASSES, (1.0, 2.0, 4.0, 9.0))]
    s = stats.summarize_policy(EVICT + timed)
    assert s["pass_ms_mean"] == pytest.approx(4.0) and s["pass_ms_median"] == pytest.approx(3.0)
    assert s["pass_ms_total"] == pytest.approx(16.0) and s["evict_passes"] == 4
    assert "pass_ms_mean" not in stats.summarize_policy(EVICT + timed[:3] + PASSES[3:])
    assert "pass_ms_mean" not in stats.summarize_policy(EVICT + PASSES)


@pytest.mark.parametrize("name", ["run.stats.jsonl", "run.stats.jsonl.gz"])
def test_compress_writes_xz_that_reads_back(tmp_path, name):
    """stats.compress takes a plain (as the hook writes it) or gzipped (older archive) file to <run>.stats.jsonl.xz,
    removes its input, and stats.read gives the same records from either."""
    import gzip

    lines = [{"record": "config", "mode": "full"}, {"record": "head", "pass": 1, "layer": 0, "tau": 0.25}]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    src = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(src, "wt") as f:
            f.write(text)
    else:
        src.write_text(text)
    before = stats.read(src)
    out = stats.compress(src)
    assert out == tmp_path / "run.stats.jsonl.xz" and not src.exists()
    assert out.read_bytes()[:6] == b"\xfd7zXZ\x00"
    assert stats.read(out) == before == ([lines[0]], [lines[1]])
