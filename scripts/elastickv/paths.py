# SPDX-License-Identifier: Apache-2.0
"""Every path of the project, resolved from the repository root (no absolute paths anywhere else)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CUDA_HOOK = ROOT / "cuda_hook"
UPSTREAM_FILE = CUDA_HOOK / "UPSTREAM"
CONFIGS = ROOT / "configs"
RESULTS = ROOT / "results"
DATA = ROOT / "data"
MODELS = ROOT / "models"  # GGUF files, git-ignored

BUILD = ROOT / "build"  # everything below is git-ignored
DOWNLOADS = BUILD / "downloads"
CACHE = BUILD / "cache"  # KL-divergence base logits and other large intermediates
LLAMA_SRC = BUILD / "llama.cpp"  # the patched tree
UPSTREAM_SRC = BUILD / "upstream" / "llama.cpp"  # the unpatched tree, for the bit-identity check

WIKITEXT_TEST = DATA / "wikitext-2-raw" / "wiki.test.raw"
WIKITEXT_VALID = DATA / "wikitext-2-raw" / "wiki.valid.raw"


def build_dir(tree: Path = LLAMA_SRC, variant: str | None = None) -> Path:
    """CMake build folder of a tree: ``build-cpu`` or ``build-cuda``. The default variant is ``cpu``, or the
    environment's EKV_BUILD_VARIANT (e.g. ``cpu-debug`` for the Debug build of make test-debug)."""
    return tree / f"build-{variant or os.environ.get('EKV_BUILD_VARIANT') or 'cpu'}"


def binary(name: str, tree: Path = LLAMA_SRC, variant: str | None = None) -> Path:
    """A llama.cpp executable of a build, e.g. ``binary("llama-perplexity")``."""
    return build_dir(tree, variant) / "bin" / name


def relative(path: Path) -> str:
    """A path as recorded in result files: relative to the repository root when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)
