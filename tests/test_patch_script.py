# SPDX-License-Identifier: Apache-2.0
"""cuda_hook/patch_llamacpp.sh: applies to the pinned tree, is idempotent, refuses a tree it does not fit
and then changes nothing."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest

from elastickv import paths

SCRIPT = paths.CUDA_HOOK / "patch_llamacpp.sh"


def patched_files() -> list[str]:
    out = []
    for p in sorted((paths.CUDA_HOOK / "patches").glob("*.patch")):
        for line in p.read_text().splitlines():
            if line.startswith("+++ b/"):
                out.append(line[6:].split()[0])
    return out


@pytest.fixture
def tree(tmp_path) -> Path:
    """The upstream files the patch edits, copied from the pinned, unpatched tree."""
    src = paths.UPSTREAM_SRC
    if not (src / "src" / "llama-context.cpp").exists():
        pytest.fail("build/upstream/llama.cpp is missing: run `make build-test`")
    dst = tmp_path / "llama.cpp"
    for rel in patched_files():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
    return dst


def run(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), str(tree)], capture_output=True, text=True)


def snapshot(tree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in tree.rglob("*") if p.is_file()}


def test_applies_then_is_idempotent(tree):
    n = len(list((paths.CUDA_HOOK / "patches").glob("*.patch")))
    r1 = run(tree)
    assert r1.returncode == 0, r1.stderr
    assert f"{n} edit(s) applied, 0 already present" in r1.stdout
    first = snapshot(tree)
    r2 = run(tree)
    assert r2.returncode == 0, r2.stderr
    assert f"0 edit(s) applied, {n} already present" in r2.stdout
    assert snapshot(tree) == first
    # the result is the tree the project builds
    for rel in patched_files():
        assert filecmp.cmp(tree / rel, paths.LLAMA_SRC / rel, shallow=False), rel
    for f in (paths.CUDA_HOOK / "tree").rglob("*"):
        if f.is_file():
            assert filecmp.cmp(f, tree / f.relative_to(paths.CUDA_HOOK / "tree"), shallow=False)


def test_refuses_a_tree_it_does_not_fit(tree):
    target = tree / "src" / "llama-context.cpp"
    text = target.read_text()
    target.write_text(text.replace("} while (mctx->next());", "} while (mctx->next() && true);", 1))
    before = snapshot(tree)
    r = run(tree)
    assert r.returncode != 0
    assert "refusing" in r.stderr and "src-llama-context.cpp.patch" in r.stderr and "Nothing was changed" in r.stderr
    assert snapshot(tree) == before


def test_refuses_what_is_not_llama_cpp(tmp_path):
    r = run(tmp_path)
    assert r.returncode != 0 and "is not a llama.cpp source tree" in r.stderr
