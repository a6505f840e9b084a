# SPDX-License-Identifier: Apache-2.0
"""The hook reaches the scored tokens, and only when asked to, with an f16 cache (flash attention on and off) and
a q8_0 cache:

* Hook off, and hook on with a tiny positive scale (1e-20: tau is ~1e-21, below every non-zero value the cache
  can hold, so the pass zeroes nothing): the logits llama-perplexity saves (--kl-divergence-base) are
  byte-identical to those of the unpatched build. The tiny scale runs the whole pass (lists, the op on every
  layer, K/V and head, the statistics read back), which its stats records show; a scale of 0 would dispatch no
  op at all and prove only that scheduling changes nothing.
* The sweet preset changes PPL and KL divergence against the same cache with the hook off; a scale of 2.0
  changes them by far more.
These run the real tools on the default model (2 chunks of WikiText-2, -c 512, -b = -ub = 64).
"""

from __future__ import annotations

import filecmp

import pytest

from elastickv import logparse, stats

#: (name, llama-perplexity flags): the cache layouts the scale tests cover
CACHES = [
    ("f16-fa-on", ["-fa", "on"]),
    ("f16-fa-off", ["-fa", "off"]),  # V transposed
    ("q8_0-fa-on", ["-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"]),  # codes zeroed in place, rotated domain
]
TINY = "1e-20"


def base_logits(llama, tmp_path, name, flags, env=None, upstream=False):
    path = tmp_path / f"{name}.kld"
    r = llama.perplexity(flags + ["--kl-divergence-base", str(path)], env=env, upstream=upstream)
    assert r.rc == 0, r.log[-3000:]
    assert path.stat().st_size > 1_000_000
    return path, r


@pytest.mark.parametrize("name, flags", CACHES, ids=[c[0] for c in CACHES])
def test_hook_off_and_a_pass_that_zeroes_nothing_are_bit_identical_to_upstream(llama, tmp_path, name, flags):
    up, r_up = base_logits(llama, tmp_path, "upstream", flags, upstream=True)
    off, r_off = base_logits(llama, tmp_path, "off", flags)
    stats_path = tmp_path / "tiny.stats.jsonl"
    tiny, r_tiny = base_logits(llama, tmp_path, "tiny", flags,
                               env={"ELASTICKV": "1", "ELASTICKV_SCALE_K": TINY, "ELASTICKV_SCALE_V": TINY,
                                    "ELASTICKV_VERBOSE": "1", "ELASTICKV_STATS": str(stats_path)})
    assert "elastickv: off" in r_off.log
    assert "elastickv: ELASTICKV=1" in r_tiny.log  # the hook was really on
    # the whole pass ran: 7 passes per chunk (pos_max 127..511), every layer, K and V, head, every non-sink cell
    _, heads = stats.read(stats_path)
    assert len(logparse.elastickv_passes(r_tiny.log)) == 14
    assert len(heads) == 14 * 30 * 2 * 3
    assert all(h["n"] == (h["pos_max"] + 1 - 64) * 64 and h["tau"] > 0 for h in heads)
    assert filecmp.cmp(up, off, shallow=False), "hook off changed the logits"
    assert filecmp.cmp(up, tiny, shallow=False), "a pass that zeroes nothing changed the logits"
    assert logparse.final_ppl(r_up.log) == logparse.final_ppl(r_off.log) == logparse.final_ppl(r_tiny.log)


@pytest.mark.parametrize("name, flags", CACHES, ids=[c[0] for c in CACHES])
def test_sweet_changes_ppl_and_a_large_scale_changes_it_far_more(llama, tmp_path, name, flags):
    base, r_base = base_logits(llama, tmp_path, "base", flags)
    ppl0 = logparse.final_ppl(r_base.log)[0]

    def compare(env):
        r = llama.perplexity(flags + ["--kl-divergence-base", str(base), "--kl-divergence"], env=env)
        assert r.rc == 0, r.log[-3000:]
        return logparse.kld_stats(r.log)

    sweet = compare({"ELASTICKV": "1", "ELASTICKV_PRESET": "sweet"})
    large = compare({"ELASTICKV": "1", "ELASTICKV_SCALE_K": "2.0", "ELASTICKV_SCALE_V": "2.0"})
    d_sweet = abs(sweet.ppl[0] / ppl0 - 1)
    d_large = abs(large.ppl[0] / ppl0 - 1)
    assert sweet.kld[0] > 1e-3 and d_sweet > 1e-4, "sweet did not reach the scored tokens"
    assert sweet.same_top_p[0] < 100.0
    assert d_large > 0.05 and d_large > 10 * d_sweet, (d_sweet, d_large)
    assert large.kld[0] > 10 * sweet.kld[0]
