# SPDX-License-Identifier: Apache-2.0
"""The guard that fails a test session which touched results/ (tests/archive_guard.py) sees every kind of change,
and the session that is running now has not touched the archive so far."""

from __future__ import annotations

import archive_guard as guard


def test_snapshot_differences_name_every_change(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.json").write_text("{}")
    (tmp_path / "y.log").write_text("log")
    before = guard.snapshot(tmp_path)
    assert guard.differences(before, guard.snapshot(tmp_path)) == []
    (tmp_path / "a" / "x.json").write_text('{"ppl": 1}')  # rewritten
    (tmp_path / "y.log").unlink()  # removed
    (tmp_path / "a" / "z.json").write_text("{}")  # added
    assert guard.differences(before, guard.snapshot(tmp_path)) == ["added    a/z.json", "removed  y.log",
                                                                   "changed  a/x.json"]


def test_the_archive_is_untouched_so_far():
    """Runs wherever it is collected; the session-end check (archive_guard.pytest_sessionfinish) covers the rest."""
    assert guard.differences(guard._state["snapshot"], guard.snapshot(guard.ARCHIVE)) == []
