# SPDX-License-Identifier: Apache-2.0
"""Running llama.cpp tools with a controlled environment and a kept raw log, measuring their peak memory."""

from __future__ import annotations

import gzip
import lzma
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

from . import paths


def open_text(path: Path, errors: str = "strict"):
    """A kept output (raw log, stats file) for reading as text, by its compression suffix: xz (.xz), gzip (.gz) or
    none; ``errors`` as for open (logs are read with "replace", as :func:`run` reads them)."""
    name = str(path)
    opener = lzma.open if name.endswith(".xz") else gzip.open if name.endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8", errors=errors)


class ToolError(RuntimeError):
    """A llama.cpp tool exited non-zero; the message carries the hook's error or the log's tail."""


def clean_env(hook_env: dict[str, str] | None = None) -> dict[str, str]:
    """The process environment without inherited ELASTICKV_* (a run must not pick up a stray setting),
    plus ``hook_env``."""
    env = {k: v for k, v in os.environ.items() if not (k == "ELASTICKV" or k.startswith("ELASTICKV_"))}
    env.update(hook_env or {})
    return env


def run(cmd: list[str], log_path: Path, hook_env: dict[str, str] | None = None, check: bool = True,
        timeout: float | None = None) -> tuple[int, str]:
    """Runs ``cmd`` from the repository root with stdout and stderr into ``log_path``; returns (rc, log)."""
    rc, text, _ = run_measured(cmd, log_path, hook_env, check, timeout)
    return rc, text


def run_measured(cmd: list[str], log_path: Path, hook_env: dict[str, str] | None = None, check: bool = True,
                 timeout: float | None = None) -> tuple[int, str, int]:
    """:func:`run`, also returning the child's peak resident set size in KiB (``ru_maxrss`` of its own rusage,
    from wait4; its waited-for descendants included). Past ``timeout`` seconds the child is killed and
    subprocess.TimeoutExpired raised, as subprocess.run does.

    Linux charges a child, at its exec, the peak RSS of the address space it leaves: this process's, since
    subprocess starts children with vfork. The peak of this process is lowered to its current RSS first
    (:func:`_reset_peak_rss`), so the figure is the tool's own peak, or this process's RSS at the start if that
    is larger (a floor of tens of MiB for the harness, far below a llama.cpp tool with its model)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _reset_peak_rss()
    with open(log_path, "w") as log:
        # no stdin: a tool that would wait for input (an interactive llama-cli) reads end-of-file instead
        proc = subprocess.Popen(cmd, cwd=paths.ROOT, env=clean_env(hook_env), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            status, rusage = _wait4(proc, timeout)
        except BaseException:  # as subprocess.run: no child outlives an interrupt
            proc.kill()
            proc.wait()
            raise
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    if rusage is None:
        raise subprocess.TimeoutExpired(cmd, timeout)
    text = log_path.read_text(errors="replace")
    if check and proc.returncode != 0:
        from .logparse import elastickv_error

        why = elastickv_error(text) or "\n".join(text.strip().splitlines()[-5:])
        raise ToolError(f"{Path(cmd[0]).name} exited with {proc.returncode}: {why} (log: {paths.relative(log_path)})")
    return proc.returncode, text, rusage.ru_maxrss  # KiB on Linux


def _reset_peak_rss() -> None:
    """Lowers this process's peak-RSS mark to its current RSS (``/proc/self/clear_refs`` 5, Linux >= 4.0), so
    that a past peak of the harness is not charged to the next child (run_measured); a no-op without /proc."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _wait4(proc: subprocess.Popen, timeout: float | None) -> tuple[int, resource.struct_rusage | None]:
    """Reaps ``proc`` with wait4: (wait status, its rusage); past ``timeout`` kills it first and returns no
    rusage (the measurement of a killed run means nothing)."""
    if timeout is None:
        _, status, rusage = os.wait4(proc.pid, 0)
        return status, rusage
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return status, rusage
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(proc.pid, signal.SIGKILL)
            _, status, _ = os.wait4(proc.pid, 0)
            return status, None
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.1)


def require_binary(path: Path) -> Path:
    if not Path(path).exists():
        raise ToolError(f"{paths.relative(path)} is not built; run `make build` (or scripts/setup/build_llamacpp.sh)")
    return Path(path)
