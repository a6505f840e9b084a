# SPDX-License-Identifier: Apache-2.0
"""Every JSON file in results/ follows a documented schema (results/SCHEMA.md): run records
(scripts/elastickv/run.schema.json), aggregates (scripts/elastickv/aggregate.schema.json), or one of the
intermediate files SCHEMA.md lists. Files they name exist; no absolute path of a machine is recorded."""

from __future__ import annotations

import fnmatch
import json

import pytest

from elastickv import models, paths, results

ALL_JSON = sorted(paths.RESULTS.rglob("*.json"))

#: intermediate files (documented in results/SCHEMA.md), checked for required keys only
INTERMEDIATE = {
    "quickstart/*/table.json": ("meta", "rows"),
    "throughput/runs/*.json": ("kind", "size", "round", "variant", "env", "command", "row", "log"),
}


def kind_of(path) -> str:
    obj = json.loads(path.read_text())
    if obj.get("kind") == "aggregate":
        return "aggregate"
    if obj.get("schema_version") == 1 and obj.get("kind") in ("perplexity", "bench", "niah", "routing"):
        return "record"
    rel = str(path.relative_to(paths.RESULTS))
    for pattern in INTERMEDIATE:
        if fnmatch.fnmatch(rel, pattern):
            return pattern
    return "unknown"


def test_there_are_records_and_aggregates():
    kinds = {kind_of(p) for p in ALL_JSON}
    assert {"record", "aggregate"} <= kinds


@pytest.mark.parametrize("path", ALL_JSON, ids=[str(p.relative_to(paths.RESULTS)) for p in ALL_JSON])
def test_result_file_follows_its_schema(path):
    text = path.read_text()
    assert "/work/" not in text and "/home/" not in text and "/root/" not in text, "absolute path in a result"
    obj = json.loads(text)
    kind = kind_of(path)
    assert kind != "unknown", f"{path.name}: not a record, an aggregate or a documented intermediate file"
    if kind == "record":
        results.validate(obj)
        assert (paths.ROOT / obj["log"]).exists(), f"raw log {obj['log']} is missing"
        stats = obj["metrics"].get("stats")
        if stats and stats.startswith("results/"):  # archived stats (others stay in build/cache; the record summarizes them)
            assert (paths.ROOT / stats).exists()
    elif kind == "aggregate":
        results.validate_aggregate(obj)
        for src in obj["sources"]:
            assert (paths.ROOT / src).exists(), f"source {src} is missing"
        assert (paths.ROOT / obj["config"]["config_file"]).exists()
    else:
        assert all(k in obj for k in INTERMEDIATE[kind])


def test_schemas_reject_broken_files():
    rec = json.loads(next(p for p in ALL_JSON if kind_of(p) == "record").read_text())
    del rec["model"]
    with pytest.raises(Exception):
        results.validate(rec)
    agg = json.loads(next(p for p in ALL_JSON if kind_of(p) == "aggregate").read_text())
    agg["script"] = "/abs/path.py"
    with pytest.raises(Exception):
        results.validate_aggregate(agg)


def test_manifest_names_every_aggregate():
    manifest = (paths.RESULTS / "MANIFEST.md").read_text()
    for p in ALL_JSON:
        if kind_of(p) == "aggregate":
            rel = str(p.relative_to(paths.RESULTS))  # MANIFEST.md names files relative to results/
            # per-model grids (niah/<model>.json, niah_policies/<model>.json) are named once with a placeholder
            per_model = p.stem in models.load()["models"] and f"{p.parent.name}/<model>.json" in manifest
            named = rel in manifest or per_model
            assert named, f"results/{rel} is not in MANIFEST.md"
