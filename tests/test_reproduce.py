# SPDX-License-Identifier: Apache-2.0
"""The archive reproduces: one small table entry (Table 5, SINK = 4, the default model on 10 chunks) re-run
with exactly the command and ELASTICKV_* variables its records hold gives the archived numbers.

llama.cpp on the CPU is deterministic for a given binary, thread count and instruction set, so on the CPU
model the record names the numbers must be equal to the printed digits; elsewhere (other SIMD paths sum in
another order) they must agree to 0.1 %.
"""

from __future__ import annotations

import json

import pytest

from elastickv import logparse, paths, results, tools

ENTRY = paths.RESULTS / "ppl" / "table5" / "smollm2-135m-c512-n10"


def rerun(rec: dict, log) -> str:
    env = dict(rec["env"])
    if "ELASTICKV_STATS" in env:
        env["ELASTICKV_STATS"] = paths.relative(log.with_suffix(".stats.jsonl"))  # never append to the archive
    _, text = tools.run(rec["command"], log, env)
    return text


def test_table5_entry_reproduces(model_path):
    base_rec = json.loads((ENTRY / "baseline-base.json").read_text())
    rec = json.loads((ENTRY / "sink4.json").read_text())
    scratch = paths.BUILD / "test-tmp" / "reproduce"
    scratch.mkdir(parents=True, exist_ok=True)
    same_cpu = rec["device"]["cpu"] == results.device_info()["cpu"] and rec["device"]["gpu"] is None
    approx = (lambda x: pytest.approx(x, rel=0, abs=0)) if same_cpu else (lambda x: pytest.approx(x, rel=1e-3))

    text = rerun(base_rec, scratch / "baseline-base.log")  # also rebuilds the base logits the entry compares with
    assert logparse.final_ppl(text)[0] == approx(base_rec["metrics"]["ppl"]["value"])

    text = rerun(rec, scratch / "sink4.log")
    k = logparse.kld_stats(text)
    assert k.ppl[0] == approx(rec["metrics"]["ppl"]["value"])
    assert k.kld[0] == approx(rec["metrics"]["kld"]["value"])
    assert k.same_top_p[0] == approx(rec["metrics"]["same_top_p_pct"]["value"])
    assert rec["metrics"]["kld"]["value"] > 0.01  # the archived entry is a real ElasticKV effect, not a no-op
