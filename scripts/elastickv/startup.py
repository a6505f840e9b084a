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

The experiment drivers (scripts/eval, scripts/bench) share a smaller part, because their command lines and what
they print differ::

    def main(argv=None) -> int:
        ap = startup.driver_parser(__doc__, "table16_head_to_head")     # config, --set, --force, --quiet
        args = startup.parse_args(ap, argv)                              # --quiet applied
        try:
            cfg = config.load(args.config, DEFAULTS, args.overrides)
            agg = run(cfg, force=args.force)
        except startup.driver_errors(ValueError) as e:                   # DRIVER_ERRORS and the driver's own
            return startup.fail(__file__, e)                             # "head_to_head: <message>", status 1
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


def driver_parser(doc: str, config_name: str | None = None) -> argparse.ArgumentParser:
    """The command line of a driver: its docstring as help, ``--config``/``--set``/``--force`` when it reads a
    config (``config_name``: the default config), and ``--quiet``."""
    from . import config

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if config_name:
        config.add_arguments(ap, config_name)
    add_quiet(ap)
    return ap


def parse_args(ap: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``ap.parse_args(argv)`` with ``--quiet`` applied."""
    args = ap.parse_args(argv)
    apply_quiet(args)
    return args


def driver_errors(*extra: type[BaseException]) -> tuple[type[BaseException], ...]:
    """The exceptions that are a user's mistake or a missing piece, not a bug, in every driver (a bad config or
    variable, an unknown or damaged model, a tool that is not built or failed, a record or result that conflicts,
    a missing file), followed by the driver's own (``extra``). They end as one line (``fail``), never a traceback."""
    from . import config, envvars, models, ppl, results, tools

    return (config.ConfigError, envvars.EnvError, models.ModelError, tools.ToolError, ppl.RecordMismatch,
            results.ResultExists, FileNotFoundError, *extra)


def fail(script: str, error: BaseException, status: int = 1) -> int:
    """Prints ``<script name>: <error>`` on stderr and returns ``status`` (``script``: the driver's __file__)."""
    print(f"{Path(script).stem}: {error}", file=sys.stderr)
    return status


def analysis_main(script: str, doc: str, config_name: str, defaults: dict, run: Callable, markdown: Callable,
                  argv: list[str] | None = None) -> int:
    """Parses the command line (``argv``, default sys.argv), loads the config and runs ``run``; a user error
    (kvanalysis.USER_ERRORS) is one line on stderr, prefixed with the script's name (``script``: its __file__),
    and exit status 1. Returns the exit status."""
    from . import config, kvanalysis as ka

    ap = driver_parser(doc, config_name)
    ka.add_dump_argument(ap)
    args = parse_args(ap, argv)
    try:
        cfg = config.load(args.config, defaults, args.overrides)
        agg = run(cfg, force=args.force, dumps=args.dumps)
    except ka.USER_ERRORS as e:
        return fail(script, e)
    print(markdown(agg))
    print(f"\n{Path(script).stem}: {cfg['output']} written")
    return 0
