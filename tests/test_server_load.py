# SPDX-License-Identifier: Apache-2.0
"""The server load test (scripts/bench/server_load.py, issue 13 item 4), scaled to fit CI: 2 slots, 4 concurrent
clients, 12 greedy requests of mixed lengths (the longer ones pass WARM mid-request). Hook off: every concurrent
answer equals the same request sent alone; hook on: no error, each slot's passes its own (stats file against
/slots), peak RSS stable. The full run (4 slots, 16 clients, 200 requests) is archived in results/bench/."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from elastickv import paths, results

SCRIPT = paths.ROOT / "scripts" / "bench" / "server_load.py"


@pytest.mark.slow
def test_small_load_run_passes_every_check(tmp_rel):
    out = tmp_rel / "server_load.json"
    sets = ["slots=2", "clients=4", "requests=12", "distinct=4", "rss_at=3", "prompt_chars=[200, 600]",
            "n_predict=[8, 16]", "ctx_per_slot=512", f"output={paths.relative(out)}",
            'hook_env={ELASTICKV: "1", ELASTICKV_WARM: "64", ELASTICKV_EVICT_EVERY: "32"}']
    r = subprocess.run([sys.executable, str(SCRIPT), *[a for s in sets for a in ("--set", s)]], cwd=paths.ROOT,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    agg = json.loads(out.read_text())
    results.validate_aggregate(agg)
    d = agg["data"]
    assert all(d["checks"].values()) and d["passed"]
    assert len(d["off"]["answers"]) == len(d["on"]["answers"]) == 12
    assert d["off"]["answers_equal_alone"] == 12 and d["off"]["errors"] == d["on"]["errors"] == 0
    assert sum(d["on"]["stats_passes"].values()) > 0 and set(d["on"]["stats_seqs"]) <= {0, 1}
    assert {a["slot"] for a in d["on"]["answers"]} <= {0, 1}
    assert d["off"]["requests_per_s"] > 0 and d["on"]["requests_per_s"] > 0
    assert "hook on:" in r.stdout and "requests/s" in r.stdout


@pytest.mark.parametrize("override, needle", [
    ("clients=0", "clients: a whole number >= 1"),
    ("distinct=500", "distinct (500) cannot exceed requests"),
    ('hook_env={ELASTICKV: "1", ELASTICKV_WARM: "-3"}', "ELASTICKV_WARM"),
    ("hook_env={ELASTICKV: '0'}", "hook_env: the ELASTICKV_* variables"),
])
def test_bad_settings_are_one_clear_line(override, needle, tmp_rel):
    r = subprocess.run([sys.executable, str(SCRIPT), "--set", override, "--set",
                        f"output={paths.relative(tmp_rel / 'x.json')}"], cwd=paths.ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("server_load: ")
