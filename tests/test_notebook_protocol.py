# SPDX-License-Identifier: Apache-2.0
"""The kv-cache-compression protocol's driver (scripts/eval/notebook_protocol.py) and its corpora, tiny, on the
default model: every row evicts (tokens evicted > 0 in every chunk), a row whose evictions free cells runs under
the physical cap and so allocates fewer real KV bytes than the f16 base (llama.cpp's own size line), the hook's
own pass time is recorded, the interleaved llama-bench gives an overhead per row, the aggregate follows its
schema, a finished sweep resumes without rerunning, and bad configs are refused with one clear line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from elastickv import corpora, paths, results

PY = sys.executable
SCRIPT = "scripts/eval/notebook_protocol.py"


def run(args):
    return subprocess.run([PY, SCRIPT, *args], cwd=paths.ROOT, capture_output=True, text=True)


def test_corpora_are_deterministic_and_named():
    """The code and qa documents are made from shipped data, byte for byte the same on every call."""
    for name in ("code", "qa"):
        p = corpora.path(name)
        first = hashlib.sha256(p.read_bytes()).hexdigest()
        p.unlink()
        assert hashlib.sha256(corpora.path(name).read_bytes()).hexdigest() == first
    code = corpora.path("code").read_text()
    assert code.count("# file: ") == 10 and "def bisect_left" in code
    qa = corpora.path("qa").read_text()
    assert qa.count("\nQuestion: ") == 10 and qa.count("\nAnswer: ") == 10
    with pytest.raises(corpora.CorpusError, match="unknown document type 'poetry'"):
        corpora.path("poetry")


def test_protocol_tiny(tmp_rel, model_path):
    rel = paths.relative(tmp_rel)
    args = ["--set", "panels=[{document: narrative, ctx: 512, chunks: 1, budgets: [128]}]",
            "--set", "rows_default=[sliding_window, h2o-80-20]",
            "--set", "bench={depth: 256, n_gen: 8, budget: 64, rounds: 1, rows: [sliding_window]}",
            "--set", f"runs_dir={rel}/runs", "--set", f"output={rel}/np.json"]
    r = run(args)
    assert r.returncode == 0, r.stderr[-3000:]
    agg = json.loads((tmp_rel / "np.json").read_text())
    results.validate_aggregate(agg)
    d = agg["data"]
    assert d["pending"] == [] and len(d["entries"]) == 2
    base = d["baselines"]["narrative-c512"]
    es = {e["row"]: e for e in d["entries"]}
    for e in es.values():
        assert e["evicted_tokens_min"] > 0 and e["kld"]["value"] > 0
        assert e["pass_ms_mean"] is not None and e["evict_passes"] >= 1 and e["evict_overhead_pct"] > 0
        rec = json.loads((paths.ROOT / e["record"]).read_text())
        results.validate(rec)
        assert rec["elastickv"]["budget"] == 128 and rec["settings"]["flash_attn"] == "off"
    sw, h2o = es["sliding_window"], es["h2o-80-20"]
    assert sw["kv_cells_cap"] is not None and sw["kv_real_mib"] < base["kv_real_mib"]
    assert h2o["kv_cells_cap"] is None and h2o["kv_real_mib"] == pytest.approx(base["kv_real_mib"])
    assert json.loads((paths.ROOT / sw["record"]).read_text())["elastickv"]["sink"] == 0
    assert set(d["bench"]["overhead"]) == {"sliding_window"}
    # resume: nothing reruns
    mtime = (paths.ROOT / h2o["record"]).stat().st_mtime
    assert run(args).returncode == 0
    assert (paths.ROOT / h2o["record"]).stat().st_mtime == mtime


@pytest.mark.parametrize("override, message", [
    ("panels=[{document: poetry, ctx: 512, chunks: 1, budgets: [128]}]", "panel document 'poetry'"),
    ("panels=[{document: code, ctx: 512, chunks: 1, budgets: [480]}]", "budget 480 must be"),
    ("rows_default=[lfu]", "rows_default names 'lfu'"),
    ("rows={x: {policy: h2o, budget: 5}}", "row x: give its ELASTICKV_* settings"),
    ("rows={x: {policy: h2o, heavy_ratio: 2}}", "ELASTICKV_HEAVY_RATIO"),
])
def test_bad_configs_are_refused(tmp_rel, override, message):
    rel = paths.relative(tmp_rel)
    r = run(["--set", override, "--set", f"runs_dir={rel}/runs", "--set", f"output={rel}/x.json"])
    assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_rel / "x.json").exists()
