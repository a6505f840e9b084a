# SPDX-License-Identifier: Apache-2.0
"""The hook reaches the scored tokens, and only when asked to.

* Hook off, and hook on with both scales 0: the logits llama-perplexity saves (--kl-divergence-base) are
  byte-identical to those of the unpatched build, with flash attention on and off.
* The sweet preset changes PPL and KL divergence; a scale of 2.0 changes them by far more.
These run the real tools on the default model (2 chunks of WikiText-2, -c 512, -b = -ub = 64).
"""

from __future__ import annotations

import filecmp

import pytest

from elastickv import logparse


def base_logits(llama, tmp_path, name, flags, env=None, upstream=False):
    path = tmp_path / f"{name}.kld"
    r = llama.perplexity(flags + ["--kl-divergence-base", str(path)], env=env, upstream=upstream)
    assert r.rc == 0, r.log[-3000:]
    assert path.stat().st_size > 1_000_000
    return path, r


@pytest.mark.parametrize("fa", ["on", "off"])
def test_hook_off_and_scale_zero_are_bit_identical_to_upstream(llama, tmp_path, fa):
    flags = ["-fa", fa]
    up, r_up = base_logits(llama, tmp_path, "upstream", flags, upstream=True)
    off, r_off = base_logits(llama, tmp_path, "off", flags)
    zero, r_zero = base_logits(llama, tmp_path, "zero", flags,
                               env={"ELASTICKV": "1", "ELASTICKV_SCALE_K": "0", "ELASTICKV_SCALE_V": "0",
                                    "ELASTICKV_VERBOSE": "1"})
    assert "elastickv: off" in r_off.log
    assert "elastickv: ELASTICKV=1" in r_zero.log  # the hook was really on
    assert filecmp.cmp(up, off, shallow=False), "hook off changed the logits"
    assert filecmp.cmp(up, zero, shallow=False), "scale 0 changed the logits"
    assert logparse.final_ppl(r_up.log) == logparse.final_ppl(r_off.log) == logparse.final_ppl(r_zero.log)


def test_sweet_changes_ppl_and_a_large_scale_changes_it_far_more(llama, tmp_path):
    base, r_base = base_logits(llama, tmp_path, "base", ["-fa", "on"])
    ppl0 = logparse.final_ppl(r_base.log)[0]

    def compare(env):
        r = llama.perplexity(["-fa", "on", "--kl-divergence-base", str(base), "--kl-divergence"], env=env)
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
