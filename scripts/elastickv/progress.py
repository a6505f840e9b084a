# SPDX-License-Identifier: Apache-2.0
"""A dependency-free progress bar for downloads and sweeps (stderr, redrawn in place on a terminal)."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "label") as bar: bar.update(n)``; ``total`` may be None (unknown)."""

    def __init__(self, total: float | None, label: str, unit: str = "") -> None:
        self.total = total
        self.label = label
        self.unit = unit
        self.done = 0.0
        self.t0 = time.time()
        self._last = 0.0
        self._tty = sys.stderr.isatty()

    def __enter__(self) -> "Progress":
        self._draw(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._draw(force=True)
        sys.stderr.write("\n" if self._tty else "")
        sys.stderr.flush()

    def update(self, n: float = 1) -> None:
        self.done += n
        self._draw()

    def _draw(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < (0.2 if self._tty else 10.0):
            return
        self._last = now
        elapsed = now - self.t0
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            eta = elapsed / frac - elapsed if frac > 0 else 0.0
            text = f"{self.label} [{bar}] {self._fmt(self.done)}/{self._fmt(self.total)}{self.unit} {elapsed:5.0f}s eta {eta:4.0f}s"
        else:
            text = f"{self.label} {self._fmt(self.done)}{self.unit} {elapsed:5.0f}s"
        sys.stderr.write(("\r" + text) if self._tty else (text + "\n"))
        sys.stderr.flush()

    @staticmethod
    def _fmt(x: float) -> str:
        if x >= 1e6:
            return f"{x / 1e6:.1f}M"
        if x >= 1e3:
            return f"{x / 1e3:.1f}k"
        return f"{x:.0f}"
