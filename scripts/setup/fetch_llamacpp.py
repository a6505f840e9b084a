#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Fetch the pinned llama.cpp (vendor/llama.cpp of the llama-cpp-python sdist named in cuda_hook/UPSTREAM),
check its sha256, and extract it into build/ twice: build/upstream/llama.cpp stays unpatched (the
reference for the bit-identity test), build/llama.cpp is the tree the hook is applied to.

Trees that already hold this sdist are left alone. Works offline once the sdist is in build/downloads/.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from elastickv import paths, pypi, upstream  # noqa: E402

MARKER = ".elastickv-sdist"


def extract(sdist: Path, subdir: str, dest: Path, sha: str) -> bool:
    """Extracts ``subdir`` of the sdist into ``dest``; False when dest already holds it."""
    marker = dest / MARKER
    if marker.exists() and marker.read_text().strip() == sha:
        return False
    if dest.exists():
        raise SystemExit(f"fetch_llamacpp: {paths.relative(dest)} exists but does not come from this sdist; "
                         f"move it away (or delete it) and run again")
    tmp = dest.with_name(dest.name + ".extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    prefix = subdir.rstrip("/") + "/"
    with tarfile.open(sdist, "r:gz") as tar:
        members = []
        for m in tar.getmembers():
            if m.name.startswith(prefix):
                m.name = m.name[len(prefix):]
                members.append(m)
        if not members:
            raise SystemExit(f"fetch_llamacpp: {subdir} is not in {sdist.name}")
        tar.extractall(tmp, members=members, filter="data")
    (tmp / MARKER).write_text(sha + "\n")
    tmp.rename(dest)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=paths.LLAMA_SRC, help="tree to be patched (default: %(default)s)")
    ap.add_argument("--upstream-dest", type=Path, default=paths.UPSTREAM_SRC,
                    help="unpatched tree (default: %(default)s)")
    ap.add_argument("--only", choices=["patched", "upstream"], help="extract only one of the two trees")
    args = ap.parse_args()

    up = upstream.read()
    try:
        sdist = pypi.fetch(up["SDIST_PACKAGE"], up["SDIST_VERSION"], up["SDIST_FILE"], up["SDIST_SHA256"],
                           paths.DOWNLOADS, sdist=True)
    except pypi.FetchError as e:
        print(f"fetch_llamacpp: {e}", file=sys.stderr)
        return 1
    for which, dest in (("upstream", args.upstream_dest), ("patched", args.dest)):
        if args.only and args.only != which:
            continue
        if extract(sdist, up["SDIST_SUBDIR"], dest, up["SDIST_SHA256"]):
            print(f"fetch_llamacpp: llama.cpp {up['LLAMACPP_COMMIT']} extracted to {paths.relative(dest)}")
        else:
            print(f"fetch_llamacpp: {paths.relative(dest)} already holds llama.cpp {up['LLAMACPP_COMMIT']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
