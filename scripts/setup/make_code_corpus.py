#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes data/python-stdlib/: the code corpus of the kv-cache-compression protocol (issue 14, document type "code").

Ten modules of the Python standard library, byte for byte as CPython 3.11.7 ships them (Lib/<name>.py), with
CPython's licence (the PSF License Agreement, LICENSE.txt from the same installation), a SHA256SUMS and a README
stating the provenance. The corpus is committed: this script only documents how it was made and re-makes it, which
gives the same bytes only under Python 3.11.7 (refused otherwise). Check the shipped files with
``sha256sum -c SHA256SUMS`` in that folder (tests/test_code_corpus.py does).

Example: scripts/setup/make_code_corpus.py
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "data" / "python-stdlib"
VERSION = (3, 11, 7)
MODULES = ("argparse", "bisect", "csv", "difflib", "fractions", "heapq", "shlex", "statistics", "string", "textwrap")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT, help=f"folder to write (default: {OUT.relative_to(ROOT)})")
    args = ap.parse_args()
    if sys.version_info[:3] != VERSION:
        print(f"make_code_corpus: the shipped corpus is CPython {'.'.join(map(str, VERSION))}'s; this is "
              f"{sys.version.split()[0]}, whose files differ", file=sys.stderr)
        return 1
    lib = Path(sysconfig.get_paths()["stdlib"])
    args.out.mkdir(parents=True, exist_ok=True)
    sums = []
    for name in (*(f"{m}.py" for m in MODULES), "LICENSE.txt"):
        src = lib / name
        if not src.is_file():
            print(f"make_code_corpus: {src} is missing from this Python installation", file=sys.stderr)
            return 1
        dst = args.out / name
        shutil.copyfile(src, dst)
        sums.append(f"{hashlib.sha256(dst.read_bytes()).hexdigest()}  {name}")
    (args.out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    print(f"make_code_corpus: {len(MODULES)} modules and LICENSE.txt written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
