# SPDX-License-Identifier: Apache-2.0
"""Progress bars for downloads, sweeps and drivers: tqdm with the harness's defaults.

``with bar(total, "label") as b: b.update(n)`` (``total`` may be None: unknown). tqdm.auto draws a widget in a
notebook and a bar redrawn in place on a terminal, with rate and ETA; written to a log file (stderr not a
terminal) the bar is plain ASCII and redrawn at most every 10 s, so a log does not fill with updates. Quiet with
``quiet=True`` (the scripts' ``--quiet``) or the environment variable ``TQDM_DISABLE=1`` (CI); byte counts
(``unit="B"``) are scaled (kB, MB). Without tqdm installed (a bare python3 before the venv exists) there is
no bar (_NoBar).
"""

from __future__ import annotations

import os
import sys


#: values of TQDM_DISABLE that leave the bars on
_ON = ("", "0", "false", "no", "off")


def quiet_by_env() -> bool:
    """TQDM_DISABLE set to anything but an off value (0, false, no, off, empty)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in _ON


class _NoBar:
    """What ``bar`` gives where tqdm is not installed: the set-up scripts run by a bare python3 before the venv
    exists (scripts/setup/build_llamacpp.sh fetching the llama.cpp sdist) and the GPU machine's pack, which
    carries only the wheels its check needs. The work is the same, only without a bar."""

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float = 1) -> None:
        return None


def bar(total: float | None, label: str, unit: str = "it", quiet: bool = False):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # no venv yet (see _NoBar); every venv has tqdm (requirements.txt)
        return _NoBar()
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=label, unit=unit, unit_scale=unit == "B", unit_divisor=1024 if unit == "B" else 1000,
                file=sys.stderr, disable=quiet or quiet_by_env(), mininterval=0.2 if tty else 10.0,
                ascii=not tty, dynamic_ncols=tty, leave=True)
