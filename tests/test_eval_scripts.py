# SPDX-License-Identifier: Apache-2.0
"""The table scripts on the default model: --help everywhere, a perplexity table on one chunk (resume, refusal
of other settings without --force, the aggregate's content), a tiny throughput run, and the analyses that read
results/ only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tolerances

from elastickv import paths, results

PY = sys.executable
SCRIPTS = sorted([*paths.ROOT.glob("scripts/eval/*.py"), *paths.ROOT.glob("scripts/analysis/*.py"),
                  *paths.ROOT.glob("scripts/bench/*.py"),
                  *paths.ROOT.glob("scripts/plot/fig*.py"), *paths.ROOT.glob("scripts/plot/tab*.py"),
                  *paths.ROOT.glob("scripts/setup/*.py"), *paths.ROOT.glob("scripts/eval/*.sh")])
# the scripts that run or read many things (drivers, benchmarks, analyses): --quiet silences their progress bars
DRIVERS = [s for s in SCRIPTS if s.suffix == ".py" and s.parent.name in ("eval", "analysis", "bench")]


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=paths.ROOT, capture_output=True, text=True, **kw)


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(s.relative_to(paths.ROOT)) for s in SCRIPTS])
def test_every_script_has_help(script):
    cmd = ["bash", str(script), "--help"] if script.suffix == ".sh" else [PY, str(script), "--help"]
    r = run(cmd)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage" in r.stdout.lower() and len(r.stdout) > 80
    if script in DRIVERS:
        assert "--quiet" in r.stdout, f"{script.name} has no --quiet"


def test_ppl_table_one_chunk_resume_and_refusal(tmp_rel, model_path):
    rel = paths.relative(tmp_rel)
    base = [PY, "scripts/eval/ppl_tables.py", "--config", "table2_ppl", "--set", "models=[smollm2-135m]",
            "--set", "contexts=[{ctx: 512, chunks: {smollm2-135m: 1}}]",
            "--set", "rows=[{name: baseline, cache: f16}, {name: sweet, cache: f16, preset: sweet}, {name: q8_0, cache: q8_0}]",
            "--set", f"runs_dir={rel}/runs", "--set", f"output={rel}/table.json"]
    r = run(base)
    assert r.returncode == 0, r.stderr[-3000:]
    agg = json.loads((tmp_rel / "table.json").read_text())
    results.validate_aggregate(agg)
    e = {x["row"]: x for x in agg["data"]["entries"]}
    assert list(e) == ["baseline", "sweet", "q8_0"]
    assert abs(e["baseline"]["kld"]["value"]) <= tolerances.HOOK_OFF_KLD  # 0 up to the base's lossy storage
    assert e["baseline"]["ppl_delta_pct"] == pytest.approx(0, abs=1e-9)
    assert e["sweet"]["kld"]["value"] > 0 and e["sweet"]["sparsity_k"] > 0.15 and e["sweet"]["resident"] == 1.0
    assert e["sweet"]["elastickv"]["scale_k"] == 0.45 and e["q8_0"]["elastickv"] is None
    assert len(e["sweet"]["per_chunk"]) == 1
    assert e["sweet"]["per_chunk"][0]["kld"] == pytest.approx(e["sweet"]["kld"]["value"], abs=1e-5)
    for src in agg["sources"]:
        results.validate(json.loads((paths.ROOT / src).read_text()))

    logs = {p: p.stat().st_mtime_ns for p in (tmp_rel / "runs").rglob("*.log")}
    r = run(base)  # a repeated (or interrupted) sweep reuses finished runs
    assert r.returncode == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_rel / "runs").rglob("*.log")} == logs

    r = run(base + ["--set", "evict_every=32"])  # other settings: refused, nothing overwritten
    assert r.returncode == 1 and "use --force" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in (tmp_rel / "runs").rglob("*.log")} == logs

    r = run(base + ["--set", "rows=[{name: x, cache: f16, scale: 1}]"])
    assert r.returncode == 1 and "unknown keys" in r.stderr


def test_ppl_table_bad_input_is_a_clear_error():
    r = run([PY, "scripts/eval/ppl_tables.py", "--set", "models=[nope]"])
    assert r.returncode == 1 and "unknown model 'nope'" in r.stderr
    r = run(["bash", "scripts/eval/run_ppl.sh", "tabel2"])
    assert r.returncode == 2 and "accepted: table2, long, sinks, all" in r.stderr


def test_throughput_tiny_run(tmp_rel, model_path):
    rel = paths.relative(tmp_rel)
    cmd = ["bash", "scripts/eval/throughput_bench.sh", "--set", "depths=[160]", "--set", "n_gen=4", "--set", "rounds=1",
           "--set", "prefill=[192]", "--set", "ubatch=64",
           "--set", 'variants=[{name: "off", hook: false}, {name: full, mode: full, evict_every: 16}]',
           "--set", f"runs_dir={rel}/runs", "--set", f"output={rel}/tp.json"]
    r = run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    agg = json.loads((tmp_rel / "tp.json").read_text())
    results.validate_aggregate(agg)
    rows = {(x["kind"], x["variant"]): x for x in agg["data"]["rows"]}
    assert set(rows) == {("decode", "off"), ("decode", "full"), ("prefill", "off"), ("prefill", "full")}
    assert rows[("decode", "off")]["overhead_pct"]["mean"] == 0.0
    assert all(x["tokens_per_s"] > 0 for x in rows.values())
    full_run = next(x for x in agg["data"]["runs"] if x["variant"] == "full")
    assert full_run["env"]["ELASTICKV"] == "1" and full_run["env"]["ELASTICKV_EVICT_EVERY"] == "16"
    assert full_run["row"]["n_depth"] in (0, 160)
    r = run(cmd[:-4] + ["--set", "n_gen=5", "--set", f"runs_dir={rel}/runs", "--set", f"output={rel}/tp.json"])
    assert r.returncode == 1 and "use --force" in r.stderr
    r = run(cmd[:2] + ["--set", 'variants=[{name: full, mode: full}]'])
    assert r.returncode == 1 and "named 'off'" in r.stderr


@pytest.mark.parametrize("script,config", [("scripts/analysis/f1_deep_analysis.py", "table12_paired_chunks"),
                                           ("scripts/analysis/f1_ppl_analysis.py", "table9_ppl_vs_accuracy"),
                                           ("scripts/analysis/f7_compression_proof.py", "f7_compression")])
def test_results_only_analyses_rerun_from_archive(tmp_rel, script, config):
    """They read results/ only: re-running them from the archive gives the archived numbers."""
    rel = paths.relative(tmp_rel)
    sets = ["--set", f"output={rel}/out.json"]
    if config == "table9_ppl_vs_accuracy":
        sets += ["--set", f"output_kv_heads={rel}/kv.json"]
    r = run([PY, script, "--config", config, *sets])
    assert r.returncode == 0, r.stderr[-3000:]
    new = json.loads((tmp_rel / "out.json").read_text())
    archived_path = paths.ROOT / results_output(config)
    archived = json.loads(archived_path.read_text())
    assert new["data"] == archived["data"]


def results_output(config: str) -> str:
    import yaml

    return yaml.safe_load((paths.CONFIGS / "experiments" / f"{config}.yaml").read_text())["output"]
