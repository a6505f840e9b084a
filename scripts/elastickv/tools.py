# SPDX-License-Identifier: Apache-2.0
"""Running llama.cpp tools with a controlled environment and a kept raw log."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from . import paths


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
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=paths.ROOT, env=clean_env(hook_env), stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout)
    text = log_path.read_text(errors="replace")
    if check and proc.returncode != 0:
        from .logparse import elastickv_error

        why = elastickv_error(text) or "\n".join(text.strip().splitlines()[-5:])
        raise ToolError(f"{Path(cmd[0]).name} exited with {proc.returncode}: {why} (log: {paths.relative(log_path)})")
    return proc.returncode, text


def require_binary(path: Path) -> Path:
    if not Path(path).exists():
        raise ToolError(f"{paths.relative(path)} is not built; run `make build` (or scripts/setup/build_llamacpp.sh)")
    return Path(path)
