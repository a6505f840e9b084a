# SPDX-License-Identifier: Apache-2.0
"""The shipped code corpus (data/python-stdlib, issue 14) is what its SHA256SUMS and README say: every listed file
present and unchanged, nothing unlisted, and its licence beside it."""

from __future__ import annotations

import hashlib

from elastickv import paths

FOLDER = paths.ROOT / "data" / "python-stdlib"


def test_code_corpus_matches_its_sums():
    listed = {}
    for line in (FOLDER / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    assert "LICENSE.txt" in listed and len([n for n in listed if n.endswith(".py")]) == 10
    for name, digest in listed.items():
        assert hashlib.sha256((FOLDER / name).read_bytes()).hexdigest() == digest, name
    shipped = {p.name for p in FOLDER.iterdir()} - {"SHA256SUMS", "README.md"}
    assert shipped == set(listed), "a file not in SHA256SUMS, or one missing"
    assert "PYTHON SOFTWARE FOUNDATION LICENSE" in (FOLDER / "LICENSE.txt").read_text()
    size = sum((FOLDER / n).stat().st_size for n in listed if n.endswith(".py"))
    assert f"{size:,} bytes" in (FOLDER / "README.md").read_text()
