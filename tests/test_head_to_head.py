# SPDX-License-Identifier: Apache-2.0
"""The head-to-head and routing-sweep drivers on the default model, tiny: records follow the run schema, the
aggregates hold what the table and figure scripts read, a finished sweep resumes without rerunning, and GER
is a fraction that the eviction really drives (h2o at 5 % evicts answer tokens that the hook-off run keeps)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from elastickv import paths, results

PY = sys.executable


def run(args):
    return subprocess.run([PY, *args], cwd=paths.ROOT, capture_output=True, text=True)


def test_head_to_head_tiny(tmp_rel, model_path):
    rel = paths.relative(tmp_rel)
    args = ["scripts/eval/head_to_head.py", "--set", "models=[smollm2-135m]", "--set", "ctx=512",
            "--set", "chunks={smollm2-135m: 1}",
            "--set", "kept=[0.5]", "--set", "policies=[h2o, topk_entries]", "--set", f"runs_dir={rel}/runs",
            "--set", f"output={rel}/h2h.json"]
    r = run(args)
    assert r.returncode == 0, r.stderr[-3000:]
    agg = json.loads((tmp_rel / "h2h.json").read_text())
    results.validate_aggregate(agg)
    es = {e["policy"]: e for e in agg["data"]["entries"]}
    assert set(es) == {"elastickv", "h2o", "topk_entries"}
    assert es["h2o"]["kept_unit"] == "cells" and abs(es["h2o"]["kept"] - 0.5) < 0.01
    assert es["topk_entries"]["kept_unit"] == "entries" and abs(es["topk_entries"]["kept"] - 0.5) < 0.01
    for e in es.values():
        assert e["kld"]["value"] > 0 and e["resident"] == pytest.approx(1.0)
        rec = json.loads((paths.ROOT / e["record"]).read_text())
        results.validate(rec)
        assert rec["settings"]["flash_attn"] == "off"
    assert json.loads((paths.ROOT / es["h2o"]["record"]).read_text())["elastickv"]["policy"] == "h2o"
    # resume: nothing reruns, the same aggregate comes back
    mtime = (paths.ROOT / es["h2o"]["record"]).stat().st_mtime
    assert run(args).returncode == 0
    assert (paths.ROOT / es["h2o"]["record"]).stat().st_mtime == mtime
    # bad input names the problem
    bad = run(args[:-2] + ["--set", "policies=[lfu]", "--set", f"output={rel}/x.json"])
    assert bad.returncode == 1 and "unknown policy 'lfu'" in bad.stderr


def test_routing_sweep_tiny(tmp_rel, model_path):
    rel = paths.relative(tmp_rel)
    r = run(["scripts/eval/routing_sweep.py", "--set", "n_per_task=1", "--set", "target_words=200",
             "--set", "kept=[0.05]", "--set", "policies=[h2o, elastickv]", "--set", f"runs_dir={rel}/runs",
             "--set", f"output={rel}/routing.json"])
    assert r.returncode == 0, r.stderr[-3000:]
    agg = json.loads((tmp_rel / "routing.json").read_text())
    results.validate_aggregate(agg)
    runs = agg["data"]["runs"]
    assert agg["data"]["items"] == 5 and len(runs) == 5 * 3
    for row in runs:
        rec = json.loads((paths.ROOT / row["record"]).read_text())
        results.validate(rec)
        assert rec["kind"] == "routing" and rec["metrics"]["answer_tokens"]
        if row["policy"] == "h2o":
            assert 0.0 <= row["ger"] <= 1.0 and row["answer_eviction_fraction"] >= row["ger"]
            assert row["kept_cells"] < 0.2  # 5 % of the cells passed, plus the uncompressed tail
        if row["policy"] == "elastickv":
            assert row.get("ger") is None and 0.0 <= row["element_ger_max"] <= 1.0
    h2o = [row for row in runs if row["policy"] == "h2o"]
    assert max(row["answer_eviction_fraction"] for row in h2o) > 0.5  # 95 % compression evicts answer tokens
    assert {s["policy"] for s in agg["data"]["summary"]} == {"baseline", "h2o", "elastickv"}
