# SPDX-License-Identifier: Apache-2.0
"""elastickv.frame.load_runs: the run records of a results folder as a DataFrame, one row per record, whose
columns hold the records' own values (on the archived head-to-head runs), with the kinds filter and clear errors
for a missing folder, an unknown kind and a damaged file. Also that the package imports without sys.path edits
(pip install -e ., the Makefile's venv step) from any working directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from elastickv import frame, paths

H2H = "results/ppl/head_to_head"


def test_one_row_per_record_with_its_values():
    df = frame.load_runs(H2H)
    files = sorted(p for p in (paths.ROOT / H2H).rglob("*.json"))
    assert len(df) == len(files) and list(df["record"]) == [paths.relative(p) for p in files]
    for _, r in df.iterrows():
        rec = json.loads((paths.ROOT / r["record"]).read_text())
        assert r["kind"] == rec["kind"] == "perplexity" and r["model"] == rec["model"]["name"]
        assert r["settings.ctx"] == rec["settings"]["ctx"] and r["commit"] == rec["git"]["commit"]
        assert r["ppl"] == rec["metrics"]["ppl"]["value"] and r["ppl_stderr"] == rec["metrics"]["ppl"]["stderr"]
        assert r["kv_mib"] == rec["metrics"]["kv_mib"] and r["hook"] == rec["elastickv"]["enabled"]
        if rec["elastickv"]["enabled"]:
            assert r["ekv.policy"] == rec["elastickv"].get("policy", "elastickv")
    # a pivot and a paired difference, the uses it is made for
    pol = df[df["ekv.policy"].isin(["h2o", "streaming"])]
    table = pol.pivot_table(index=["model", "ekv.budget"], columns="ekv.policy", values="kld")
    assert table.shape[1] == 2 and (table["h2o"] - table["streaming"]).notna().all()


def test_kinds_and_errors(tmp_path):
    assert frame.load_runs(H2H, kinds=("niah",)).empty
    with pytest.raises(ValueError, match="unknown record kinds"):
        frame.load_runs(H2H, kinds=("perplexity", "pdf"))
    with pytest.raises(FileNotFoundError, match="no such results folder"):
        frame.load_runs(tmp_path / "nothing")
    (tmp_path / "a.json").write_text('{"kind": "perplexity", "schema_ver')
    with pytest.raises(ValueError, match="not valid JSON"):
        frame.load_runs(tmp_path)


def test_package_imports_from_anywhere(tmp_path):
    """No sys.path edit: the venv's editable install of this checkout."""
    r = subprocess.run([sys.executable, "-c", "import elastickv.frame, elastickv.paths as p; print(p.ROOT)"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(paths.ROOT)


def test_entries_flattens_value_and_stderr_and_keeps_the_order():
    agg = {"data": {"entries": [
        {"row": "b", "kld": {"value": 0.5, "stderr": 0.1}, "kept": 0.25, "hist": [1, 2]},
        {"row": "a", "kld": None, "kept": 0.5, "hist": [3]},
    ], "runs": []}}
    df = frame.entries(agg)
    assert list(df["row"]) == ["b", "a"]
    assert df.loc[0, "kld"] == 0.5 and df.loc[0, "kld_stderr"] == 0.1
    assert df["kld"].isna().iloc[1] and df["kld_stderr"].isna().iloc[1]
    assert df.loc[1, "hist"] == [3] and list(df["kept"]) == [0.25, 0.5]
    assert frame.entries(agg, key="runs").empty
    assert frame.entries(agg["data"]["entries"]).shape == df.shape
