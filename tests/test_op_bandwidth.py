# SPDX-License-Identifier: Apache-2.0
"""scripts/bench/op_bandwidth.py: the op and its copy reference timed by the patched test-backend-ops on this
CPU (a few small cases), the aggregate's schema and content, the parser on the archived raw output, and clear
errors for cases that are not compiled in. Timings are not asserted (a shared machine): only that both sides
were measured on the same bytes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from elastickv import paths, results

PY = sys.executable
SCRIPT = "scripts/bench/op_bandwidth.py"
sys.path.insert(0, str(paths.ROOT / "scripts" / "bench"))
import op_bandwidth  # noqa: E402


def run(args):
    return subprocess.run([PY, SCRIPT, *args], cwd=paths.ROOT, capture_output=True, text=True)


def test_help():
    r = run(["--help"])
    assert r.returncode == 0 and "copy time / op time" in r.stdout


@pytest.mark.parametrize("override, message", [
    ("types=[q5_0]", "types: a non-empty list of f16, q8_0, q4_0"),
    ("cells=[1000]", "cells: a non-empty list of 4096, 16384, 32768"),
    ("modes=[]", "modes: a non-empty list of full, incremental"),
    ("variant=rocm", "variant: cpu or cuda"),
])
def test_config_errors(override, message):
    r = run(["--set", override, "--set", "output=build/test-tmp/op_bandwidth_bad.json"])
    assert r.returncode == 1 and message in r.stderr, r.stderr[-2000:]


def test_small_cases_on_this_cpu(tmp_rel, request):
    """SmolLM2's shape at 4096 cells, f16 in both layouts and q4_0, full and incremental: 6 cases, each with
    its copy of the same bytes."""
    request.getfixturevalue("ggml_cpu")  # the CPU build exists (test-backend-ops is built beside it)
    out = tmp_rel / "op.json"
    r = run(["--set", "models=[smollm2-135m]", "--set", "cells=[4096]", "--set", "types=[f16, q4_0]",
             "--set", f"output={paths.relative(out)}"])
    assert r.returncode == 0, r.stderr[-3000:]
    agg = json.loads(out.read_text())
    results.validate_aggregate(agg)
    cases = agg["data"]["cases"]
    keys = {(c["type"], c["layout"], c["mode"]) for c in cases}
    assert keys == {(t, lay, m) for t, lay in (("f16", "rows"), ("f16", "trans"), ("q4_0", "rows"))
                    for m in ("full", "incremental")}
    for c in cases:
        assert c["model"] == "smollm2-135m" and (c["n_head"], c["head_dim"], c["n_cells"]) == (3, 64, 4096)
        assert c["n_list"] == (4096 if c["mode"] == "full" else 64)
        assert c["op_kb"] == c["copy_kb"], "the op and its reference must move the same bytes"
        per_cell = {"f16": 3 * 64 * 2, "q4_0": 3 * 2 * 18}[c["type"]]
        assert c["op_kb"] == 2 * per_cell * c["n_list"] // 1024
        assert c["ratio"] == pytest.approx(c["op_gb_s"] / c["copy_gb_s"])
    s = agg["data"]["summary"]
    assert s["full"]["cases"] == 3 and s["full"]["target_ratio"] == 0.5
    assert s["full"]["meets_target"] == (s["full"]["ratio_min"] >= 0.5)
    assert (paths.ROOT / agg["sources"][0]).exists()  # the raw output is kept


def test_parser_on_the_archived_output():
    """The archived run's raw test-backend-ops output parses back to its aggregate's cases."""
    agg = json.loads((paths.ROOT / "results" / "bench" / "op_bandwidth_cpu.json").read_text())
    text = (paths.ROOT / agg["sources"][0]).read_text()
    cases = op_bandwidth.cases(op_bandwidth.parse_sql(text), agg["config"])
    assert cases == agg["data"]["cases"]


def test_parser_refuses_output_without_rows():
    with pytest.raises(op_bandwidth.BenchError, match="printed no perf rows"):
        op_bandwidth.parse_sql("Testing 1 devices\nBackend 1/1: CPU\n  Skipping\n")
