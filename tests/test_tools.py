# SPDX-License-Identifier: Apache-2.0
"""tools.run_measured: the child's log, exit status and peak resident set size (wait4), its timeout and
tools.run's unchanged (rc, log). Runs Python children only, no llama.cpp tool."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from elastickv import tools

ALLOCATE = "import time; b = b'x' * (200 << 20); time.sleep(0.2); print('allocated', len(b))"


def rss_kib() -> int:
    """This process's current resident set size (VmRSS), KiB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))


def test_peak_rss_of_the_child(tmp_path):
    rc, text, peak_kib = tools.run_measured([sys.executable, "-c", ALLOCATE], tmp_path / "a.log")
    assert rc == 0 and "allocated 209715200" in text
    assert peak_kib / 1024 > 150  # 200 MiB written: resident


def test_a_past_peak_of_the_harness_is_not_the_childs(tmp_path):
    """Linux charges a vforked child the parent's peak RSS at its exec: a 400 MiB peak of this process, freed
    before the run, must not show up as the child's (run_measured lowers the mark to the current RSS first)."""
    peak = b"x" * (400 << 20)
    del peak
    rc, _, small_kib = tools.run_measured([sys.executable, "-c", "pass"], tmp_path / "b.log")
    assert rc == 0 and small_kib < rss_kib() + 64 * 1024


def test_run_keeps_its_return_value_and_errors(tmp_path):
    assert tools.run([sys.executable, "-c", "print('hi')"], tmp_path / "c.log") == (0, "hi\n")
    cmd = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    assert tools.run(cmd, tmp_path / "d.log", check=False) == (3, "boom\n")
    with pytest.raises(tools.ToolError, match="exited with 3: boom"):
        tools.run(cmd, tmp_path / "d.log")


def test_timeout_kills_the_child(tmp_path):
    with pytest.raises(subprocess.TimeoutExpired):
        tools.run_measured([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "e.log", timeout=0.5)
    rc, _, _ = tools.run_measured([sys.executable, "-c", "pass"], tmp_path / "f.log", timeout=30)
    assert rc == 0
