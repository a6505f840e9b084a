# SPDX-License-Identifier: Apache-2.0
"""The test session leaves results/ (the archive of real runs) exactly as it found it.

A pytest plugin (loaded by conftest.py): at the start of the session it takes a snapshot of every file under
results/ (path and sha256) and `git status` of results/; at the end it compares both. A file written, changed
or removed by any test (or by a script a test ran with its default output) fails the session with the list
of paths, even when every test passed. Tests write to scratch folders (build/test-tmp, pytest's tmp_path).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT / "results"


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by path relative to it."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What changed between two snapshots, one line per path: ``added``, ``removed`` or ``changed``."""
    lines = [f"added    {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"removed  {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"changed  {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines


def git_status(folder: Path) -> str | None:
    """``git status --porcelain`` of ``folder`` (untracked files included); None outside a git checkout."""
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=all", "--",
                            str(folder)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


_state: dict = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    _state["snapshot"] = snapshot(ARCHIVE)
    _state["git"] = git_status(ARCHIVE)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "snapshot" not in _state or getattr(session.config.option, "collectonly", False):
        return
    lines = differences(_state["snapshot"], snapshot(ARCHIVE))
    git_after = git_status(ARCHIVE)
    if _state["git"] is not None and git_after is not None and git_after != _state["git"]:
        lines.append("git status of results/ changed during the session:")
        lines += [f"  {x}" for x in git_after.splitlines() if x not in _state["git"].splitlines()]
    if lines:
        _state["failed"] = lines
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config) -> None:
    lines = _state.get("failed")
    if lines:
        terminalreporter.section("the tests changed the archive (results/)", red=True, bold=True)
        terminalreporter.line("Tests must work in scratch folders; these files of results/ differ from the start "
                              "of the session:", red=True)
        for x in lines:
            terminalreporter.line(f"  {x}", red=True)
