# SPDX-License-Identifier: Apache-2.0
"""The pinned upstream llama.cpp, read from cuda_hook/UPSTREAM (the one place it is written)."""

from __future__ import annotations

from . import paths


def read() -> dict[str, str]:
    """KEY=VALUE pairs of cuda_hook/UPSTREAM (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    for line in paths.UPSTREAM_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip()
    return out
