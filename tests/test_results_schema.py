# SPDX-License-Identifier: Apache-2.0
"""Every JSON file in results/ follows a documented schema (results/SCHEMA.md): run records
(scripts/elastickv/run.schema.json and the schema of their kind), aggregates (aggregate.schema.json and the
schema of the script that wrote them), or one of the intermediate files SCHEMA.md lists (schemas/intermediate.*).
Files they name exist; no absolute path of a machine is recorded. That the schemas reject broken files is
tests/test_results_schema_negative.py; that the numbers equal what the raw logs say, tests/test_results_reparse.py."""

from __future__ import annotations

import datetime as dt
import fnmatch
import json

import pytest

from elastickv import models, paths, results, schema

ALL_JSON = sorted(paths.RESULTS.rglob("*.json"))

#: intermediate files (documented in results/SCHEMA.md) and their schemas
INTERMEDIATE = {
    "quickstart/*/table.json": schema.QUICKSTART_TABLE,
    "throughput/runs/*.json": schema.THROUGHPUT_RUN,
    "gpu/*/summary.json": schema.GPU_SUMMARY,
    "gpu/*/hook_agreement.json": schema.GPU_HOOK_AGREEMENT,
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


def recorded_paths(obj: dict, kind: str) -> list[str]:
    """The file paths a result file records (all must be relative to the repository root in the archive)."""
    if kind == "record":
        out = [obj["log"], obj["build"]["tree"], obj["build"]["binary"], obj["model"]["file"], obj["command"][0]]
        out += [obj["data"]["file"]] if obj["data"] else []
        out += [p for p in (obj["elastickv"].get("stats"), obj["elastickv"].get("dump"), obj["metrics"].get("stats"))
                if p]
        out += [r["log"] for r in obj["metrics"].get("runs", [])]
        return out
    if kind == "aggregate":
        return [*obj["sources"], obj["config"]["config_file"]]
    if kind == "throughput/runs/*.json":
        return [obj["log"], obj["command"][0]]
    if kind == "gpu/*/summary.json":
        return obj["files"] + [s["log"] for s in obj["steps"] if s["log"]]
    if kind == "gpu/*/hook_agreement.json":
        return [obj["settings"]["model"], obj["settings"]["text"]] + [p[side]["log"] for p in obj["pairs"]
                                                                       for side in ("gpu", "cpu")]
    return [r["record"] for r in obj["rows"]] + [obj["meta"]["data"]]


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
    absolute = [p for p in recorded_paths(obj, kind) if p.startswith(("/", "~")) or ".." in p.split("/")]
    assert not absolute, f"paths not relative to the repository root: {absolute}"
    if kind == "record":
        results.validate(obj)
        assert obj["name"] == path.stem, "a record's name is its file name"
        assert dt.datetime.fromisoformat(obj["finished"]) >= dt.datetime.fromisoformat(obj["started"])
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
        schema.validate(obj, INTERMEDIATE[kind])
        if kind == "throughput/runs/*.json":
            assert (paths.ROOT / obj["log"]).exists()


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
