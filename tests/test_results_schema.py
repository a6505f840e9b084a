# SPDX-License-Identifier: Apache-2.0
"""Every run record in results/ follows the documented schema (scripts/elastickv/run.schema.json,
results/SCHEMA.md), names files that exist, and its raw log is kept."""

from __future__ import annotations

import json

import pytest

from elastickv import paths, results

RECORDS = sorted(p for p in paths.RESULTS.rglob("*.json") if '"schema_version"' in p.read_text()[:200])


def test_there_are_records():
    assert RECORDS, "results/ holds no run record"


@pytest.mark.parametrize("path", RECORDS, ids=[str(p.relative_to(paths.RESULTS)) for p in RECORDS])
def test_record_follows_schema(path):
    rec = json.loads(path.read_text())
    results.validate(rec)
    assert (paths.ROOT / rec["log"]).exists(), f"raw log {rec['log']} is missing"
    assert "/work/" not in path.read_text() and "/home/" not in path.read_text(), "absolute path in a record"


def test_schema_rejects_a_broken_record():
    rec = json.loads(RECORDS[0].read_text())
    del rec["model"]
    with pytest.raises(Exception):
        results.validate(rec)
