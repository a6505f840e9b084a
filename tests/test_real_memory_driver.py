# SPDX-License-Identifier: Apache-2.0
"""The quality-against-real-memory driver (scripts/eval/real_memory.py, Table 19): its plan of the archived
config (caps equal to envvars.min_kv_cells, shared scope for the score policies, references with flash attention
off and no cap), config errors, --collect of a sweep that has not run, and a tiny real sweep on the default
model at c=512 whose capped row really allocates fewer KV bytes (from llama.cpp's log) than the f16 cache."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from elastickv import config, envvars, paths, results

sys.path.insert(0, str(paths.ROOT / "scripts" / "eval"))
import real_memory as rm  # noqa: E402

PY = sys.executable


def run(args):
    return subprocess.run([PY, "scripts/eval/real_memory.py", *args], cwd=paths.ROOT, capture_output=True, text=True)


def test_plan_of_the_archived_config():
    cfg = config.load("table19_real_memory", rm.DEFAULTS)
    rm.check(cfg)
    for p in cfg["panels"]:
        jobs = rm.plan(cfg, p)
        assert jobs[0]["name"] == "base-fa-on" and jobs[0]["kld"] == "base" and jobs[0]["settings"].hook == {}
        assert len({j["name"] for j in jobs}) == len(jobs)
        for j in jobs[1:]:
            s = j["settings"]
            assert s.cache_type_k == s.cache_type_v == j["cache"] and s.batch == cfg["evict_every"]
            if j["group"] == "cap" and j["method"] != "none":
                assert s.flash_attn == "on"
                assert j["cap"] == envvars.min_kv_cells(envvars.budget_text(j["budget"]), p["ctx"], cfg["evict_every"],
                                                        cfg["evict_every"], cfg["warm"])
                resolved = envvars.resolve(s.hook)
                assert resolved["kv_cells"] == j["cap"] and envvars.frees_all(resolved)
            if j["group"] == "reference":
                assert s.flash_attn == "off" and s.cache_type_k == "f16" and "ELASTICKV_KV_CELLS" not in s.hook
                assert any(b["name"] == "base-fa-off" for b in jobs[: jobs.index(j)])


@pytest.mark.parametrize("sets,message", [
    (["policies=[pyramidkv]"], "cannot free its evictions"),
    (["panels=[{model: smollm2-135m, ctx: 512}]"], "model, ctx and chunks"),
    (["panels=[{model: smollm2-135m, ctx: 512, chunks: 1, kept: [0.5]}]"], "unknown keys"),
    (["cache_types=[q4_0]"], "must include f16"),
    (["cache_types=[f16, q4_1]"], "accepted f16, q8_0, q4_0"),
    (["fractions=[1.5]"], "in (0, 1)"),
    (["policy_cache_types={h2o: [q5_0]}"], "not within cache_types"),
])
def test_config_errors_name_the_problem(sets, message):
    r = run([arg for s in sets for arg in ("--set", s)] + ["--collect", "--set", "output=build/test-tmp/never.json"])
    assert r.returncode == 1 and message in r.stderr, r.stderr


def test_collect_of_a_sweep_not_run(tmp_rel):
    rel = paths.relative(tmp_rel)
    r = run(["--collect", "--set", f"runs_dir={rel}/runs", "--set", f"output={rel}/rm.json"])
    assert r.returncode == 0, r.stderr
    agg = json.loads((tmp_rel / "rm.json").read_text())
    results.validate_aggregate(agg)
    assert agg["data"]["entries"] == []
    assert all(p["base"] is None and len(p["pending"]) == p["runs"] for p in agg["data"]["panels"])
    assert not (tmp_rel / "runs").exists()  # --collect runs nothing


def test_tiny_sweep_frees_real_memory(tmp_rel, model_path):
    rel = paths.relative(tmp_rel)
    args = ["--set", "panels=[{model: smollm2-135m, ctx: 512, chunks: 1}]", "--set", "cache_types=[f16]",
            "--set", "fractions=[0.25]", "--set", "policies=[h2o]", "--set", "policy_cache_types={}",
            "--set", "reference_preset=null", "--set", "reference_policies=[]",
            "--set", f"runs_dir={rel}/runs", "--set", f"output={rel}/rm.json"]
    r = run(args)
    assert r.returncode == 0, r.stderr[-3000:]
    agg = json.loads((tmp_rel / "rm.json").read_text())
    results.validate_aggregate(agg)
    es = {e["row"]: e for e in agg["data"]["entries"]}
    assert set(es) == {"f16-none", "f16-h2o-0.25"} and agg["data"]["panels"][0]["pending"] == []
    f16, h2o = es["f16-none"], es["f16-h2o-0.25"]
    cap = envvars.min_kv_cells("0.25", 512, 64, 64, 128)
    assert h2o["kv_cells"] == h2o["kv_cells_cap"] == cap < f16["kv_cells"] == 512
    assert h2o["kv_real_mib"] < f16["kv_real_mib"] and h2o["resident"] == pytest.approx(512 / cap, rel=0.01)
    assert h2o["kld"]["value"] > 0 and h2o["freed_cells"] > 0 and h2o["elastickv"]["scope"] == "shared"
    for src in agg["sources"]:
        results.validate(json.loads((paths.ROOT / src).read_text()))
    # resume: nothing reruns
    mtime = (paths.ROOT / h2o["record"]).stat().st_mtime
    assert run(args).returncode == 0
    assert (paths.ROOT / h2o["record"]).stat().st_mtime == mtime
    # a grown grid: the aggregate made with the old config is refused without --force; with it, the finished runs
    # are reused and only the new one runs
    grown = [a.replace("fractions=[0.25]", "fractions=[0.5, 0.25]") for a in args]
    r = run(grown)
    assert r.returncode == 1 and "use --force" in r.stderr
    r = run(grown + ["--force"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (paths.ROOT / h2o["record"]).stat().st_mtime == mtime
    rows = {e["row"] for e in json.loads((tmp_rel / "rm.json").read_text())["data"]["entries"]}
    assert rows == {"f16-none", "f16-h2o-0.25", "f16-h2o-0.5"}


def test_pareto_front_of_figure_12_and_table_19():
    sys.path.insert(0, str(paths.ROOT / "scripts" / "plot"))
    import plotcommon

    rows = [{"n": "f16", "m": 90.0, "k": 0.0}, {"n": "q8", "m": 47.81, "k": 0.0036},
            {"n": "cap-f16", "m": 47.79, "k": 0.0176},  # 0.04 % less memory than q8: a tie, and a worse KLD
            {"n": "q4", "m": 25.31, "k": 0.0397}, {"n": "cap-q8", "m": 25.39, "k": 0.0183},
            {"n": "cap-q4", "m": 13.44, "k": 0.0491}, {"n": "bad", "m": 13.0, "k": 0.5}]
    front = plotcommon.pareto_front(rows, lambda r: r["m"], lambda r: r["k"])
    assert [r["n"] for r in front] == ["bad", "cap-q4", "cap-q8", "q8", "f16"]
    strict = plotcommon.pareto_front(rows, lambda r: r["m"], lambda r: r["k"], tie=0.0)
    assert "cap-f16" in {r["n"] for r in strict} and "q4" in {r["n"] for r in strict}


@pytest.mark.parametrize("content,why", [('{"schema_version": 1, "data": {"pan', "is not valid JSON"),
                                         ("", "is not valid JSON"), ("[1, 2]", "holds a JSON list")])
def test_a_damaged_result_file_is_one_clear_line(tmp_path, monkeypatch, capsys, content, why):
    """A figure or table script given a truncated or damaged result file (here Table 19's) exits 1 with one line
    that names the file and the remedy, not a traceback."""
    sys.path.insert(0, str(paths.ROOT / "scripts" / "plot"))
    import plotcommon
    import tab19_real_memory

    (tmp_path / "real_memory.json").write_text(content)
    monkeypatch.setattr(plotcommon, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["tab19_real_memory.py"])
    assert plotcommon.main_guard(tab19_real_memory.main) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results/real_memory.json" in err and why in err and "MANIFEST" in err
