# SPDX-License-Identifier: Apache-2.0
"""The start-up every analysis script shares: thread settings before numpy, the command line (config, --set,
--force, --dumps, --quiet), the config with its defaults, one error line instead of a traceback, and the
aggregate's table on stdout.

An analysis script is::

    from elastickv import startup
    startup.single_threaded_blas()          # before numpy is imported anywhere
    import numpy as np
    ...
    def main(argv=None) -> int:
        return startup.analysis_main(__file__, __doc__, "supp_tau_band_energy", DEFAULTS, run, markdown, argv)

``run(cfg, force=..., dumps=...)`` writes and returns the aggregate; ``markdown(agg)`` is its table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable


def single_threaded_blas() -> None:
    """One BLAS/OpenMP thread unless the caller's environment says otherwise: the analyses' products are small,
    and OpenBLAS threads on a busy 2-core machine run them ~100x slower. Takes effect only before numpy is first
    imported (a script calls it first thing; a test that imports the script into a running interpreter keeps that
    interpreter's BLAS threads)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def add_quiet(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quiet", action="store_true", help="no progress bars (as TQDM_DISABLE=1)")


def apply_quiet(args: argparse.Namespace) -> None:
    if getattr(args, "quiet", False):
        os.environ["TQDM_DISABLE"] = "1"


def analysis_main(script: str, doc: str, config_name: str, defaults: dict, run: Callable, markdown: Callable,
                  argv: list[str] | None = None) -> int:
    """Parses the command line (``argv``, default sys.argv), loads the config and runs ``run``; a user error
    (kvanalysis.USER_ERRORS) is one line on stderr, prefixed with the script's name (``script``: its __file__),
    and exit status 1. Returns the exit status."""
    from . import config, kvanalysis as ka

    name = Path(script).stem
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_arguments(ap, config_name)
    ka.add_dump_argument(ap)
    add_quiet(ap)
    args = ap.parse_args(argv)
    apply_quiet(args)
    try:
        cfg = config.load(args.config, defaults, args.overrides)
        agg = run(cfg, force=args.force, dumps=args.dumps)
    except ka.USER_ERRORS as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    print(markdown(agg))
    print(f"\n{name}: {cfg['output']} written")
    return 0
