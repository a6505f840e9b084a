# SPDX-License-Identifier: Apache-2.0
"""The archive reproduces: one small table entry (Table 5, SINK = 4, the default model on 10 chunks) re-run
with exactly the command and ELASTICKV_* variables its records hold gives the archived numbers.

llama.cpp on the CPU is deterministic for a given binary, thread count and instruction set. On the CPU the
archive was made on (the same CPU model, and the same features in llama.cpp's system_info line, i.e. the same
compiled SIMD paths and threads) the numbers must equal the printed digits. On any other CPU they must agree
within the tolerances of tests/tolerances.py, which were measured, not guessed (see there), and which a real
change of the result still exceeds: the same run with SINK = 8 fails the comparison on every CPU
(test_a_changed_result_fails_the_comparison).
"""

from __future__ import annotations

import json

import pytest
import tolerances

from elastickv import logparse, paths, ppl, results, tools

ENTRY = paths.RESULTS / "ppl" / "table5" / "smollm2-135m-c512-n10"
SCRATCH = paths.BUILD / "test-tmp" / "reproduce"


def rerun(rec: dict, name: str, env_change: dict | None = None) -> str:
    """Runs the record's command with its ELASTICKV_* variables (stats to a scratch file, never the archive)."""
    env = dict(rec["env"]) | (env_change or {})
    log = SCRATCH / f"{name}.log"
    if "ELASTICKV_STATS" in env:
        env["ELASTICKV_STATS"] = paths.relative(log.with_suffix(".stats.jsonl"))
        (log.with_suffix(".stats.jsonl")).unlink(missing_ok=True)
    _, text = tools.run(rec["command"], log, env)
    return text


def log_values(text: str, kld: str) -> dict:
    """The compared metrics of a re-run's log, read as the harness reads them into a record."""
    return ppl.metric_values(ppl.log_metrics(text, kld))


def archived_metrics(rec: dict) -> dict:
    return ppl.metric_values(rec["metrics"])


def same_cpu_and_build(rec: dict, text: str) -> bool:
    """The archive's CPU model, no GPU, and the same system_info (instruction sets compiled and used, threads)."""
    archived_log = (paths.ROOT / rec["log"]).read_text(errors="replace")
    return (rec["device"]["cpu"] == results.device_info()["cpu"] and rec["device"]["gpu"] is None
            and logparse.system_info(archived_log) == logparse.system_info(text))


@pytest.fixture(scope="module")
def archive():
    SCRATCH.mkdir(parents=True, exist_ok=True)
    return {name: json.loads((ENTRY / f"{name}.json").read_text()) for name in ("baseline-base", "sink4")}


@pytest.fixture(scope="module")
def base_rerun(archive):
    """The base run again: also rebuilds the base logits the entry compares with (in build/cache/kld)."""
    return rerun(archive["baseline-base"], "baseline-base")


def test_table5_entry_reproduces(archive, base_rerun):
    exact = same_cpu_and_build(archive["baseline-base"], base_rerun)
    got = log_values(base_rerun, "base")
    assert tolerances.violations(got, archived_metrics(archive["baseline-base"]), exact) == []

    text = rerun(archive["sink4"], "sink4")
    assert same_cpu_and_build(archive["sink4"], text) == exact
    assert tolerances.violations(log_values(text, "compare"), archived_metrics(archive["sink4"]), exact) == []
    assert archive["sink4"]["metrics"]["kld"]["value"] > 0.01  # the archived entry is a real ElasticKV effect


def test_a_changed_result_fails_the_comparison(archive, base_rerun):
    """SINK = 8 instead of 4: the comparison that accepts the re-run above rejects it, exact or not."""
    text = rerun(archive["sink4"], "sink8", {"ELASTICKV_SINK": "8"})
    want = archived_metrics(archive["sink4"])
    got = log_values(text, "compare")
    assert tolerances.violations(got, want, exact=False), ("SINK 8 passed the cross-CPU tolerance", got, want)
    assert tolerances.violations(got, want, exact=True)


def test_the_tolerances_are_measured():
    """The tolerances cover every deviation scripts/bench/cross_isa.py measured on other instruction sets, and the
    change SINK = 8 makes on each of those builds is outside them (so the test above fails on every CPU)."""
    agg = json.loads(tolerances.MEASUREMENT.read_text())
    for b in agg["data"]["builds"]:
        for row, dev in b["deviation"].items():
            for key, value in dev.items():
                assert value <= tolerances.REPRODUCE[key], (b["isa"], row, key, value)
        effect = b["changed_effect"]
        assert any(effect[k] > 2 * tolerances.REPRODUCE[k] for k in effect), (b["isa"], effect)
        # the hook-off run against its own base logits stays within the bound the harness tests use
        assert abs(b["metrics"]["baseline"]["kld"]) <= tolerances.HOOK_OFF_KLD, (b["isa"], b["metrics"]["baseline"])
    assert {b["isa"] for b in agg["data"]["builds"]} >= {"avx512", "avx2", "sse42"}


def test_violations_compares_what_it_says():
    want = {"ppl": 26.7, "ln_ppl_ratio": -0.003, "kld": 0.0235, "same_top_p_pct": 90.745}
    assert tolerances.violations(dict(want), want, exact=True) == []
    off = dict(want, kld=want["kld"] * (1 + 0.5 * tolerances.REPRODUCE["kld"]))
    assert tolerances.violations(off, want, exact=False) == [] and tolerances.violations(off, want, exact=True)
    far = dict(want, kld=want["kld"] * (1 + 2 * tolerances.REPRODUCE["kld"]))
    assert [v.split(":")[0] for v in tolerances.violations(far, want, exact=False)] == ["kld"]
    with pytest.raises(KeyError):
        tolerances.violations({"ppl": 1.0}, want, exact=True)  # a metric missing from the re-run is an error
