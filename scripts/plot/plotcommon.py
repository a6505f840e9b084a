# SPDX-License-Identifier: Apache-2.0
"""Shared by the figure scripts: they read only results/ and write paper/figures/<name>.pdf and .png."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on CI machines
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"
FIGURES = ROOT / "paper" / "figures"

plt.rcParams.update({"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
                     "figure.dpi": 150, "savefig.bbox": "tight", "pdf.fonttype": 42,
                     "svg.hashsalt": "elastickv", "path.simplify": False})


#: display names of the rows of the policy comparisons (Tables 16 and 18, Figure 11); LaTeX-safe
POLICY_LABELS = {"baseline": "hook off", "elastickv": "ElasticKV", "streaming": "StreamingLLM", "h2o": "H2O",
                 "scissorhands": "ScissorHands", "pyramidkv": "PyramidKV", "random_tokens": "random tokens",
                 "random_entries": "random entries", "topk_entries": "top-$k$ entries",
                 "sliding_window": "sliding window", "lru": "LRU", "lru_fifo": "LRU as FIFO", "semantic": "semantic",
                 "learned": "learned"}


#: memories closer than this (relative) count as equal on a Pareto front: a capped cache and a quantized one of
#: (nearly) the same bytes (Table 19, Figure 12)
PARETO_TIE = 0.01


def pareto_front(rows: list[dict], memory, quality, tie: float = PARETO_TIE) -> list[dict]:
    """The rows no other row beats: another row with a lower ``quality(row)`` (lower is better) at a
    ``memory(row)`` at most (1 + tie) times this row's. Sorted by memory; quality falls along the front."""
    front = [r for r in rows
             if not any(quality(o) < quality(r) and memory(o) <= memory(r) * (1 + tie) for o in rows)]
    return sorted(front, key=memory)


class MissingResult(FileNotFoundError):
    """The result file a figure needs is not in results/, or cannot be read as one."""


def load(relpath: str) -> dict:
    """A result JSON under results/ (e.g. ``load("results_all.json")``); a clear error when it is missing, is not
    JSON (a truncated or damaged copy) or is not an object."""
    path = RESULTS / relpath
    remedy = "restore it (git checkout) or rerun the script that makes it, listed in results/MANIFEST.md"
    if not path.exists():
        raise MissingResult(f"results/{relpath} is missing; the script that makes it is listed in results/MANIFEST.md")
    try:
        data = json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError as e:
        raise MissingResult(f"results/{relpath} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}: "
                            f"truncated or damaged); {remedy}") from None
    if not isinstance(data, dict):
        raise MissingResult(f"results/{relpath} holds a JSON {type(data).__name__}, not a result object; {remedy}")
    return data


def save(fig: "plt.Figure", name: str) -> list[Path]:
    """Writes paper/figures/<name>.pdf (for LaTeX, no timestamp so rebuilds are identical) and .png."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    out = [FIGURES / f"{name}.pdf", FIGURES / f"{name}.png"]
    fig.savefig(out[0], metadata={"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None})
    fig.savefig(out[1], metadata={"Software": None})
    plt.close(fig)
    for p in out:
        print(f"wrote {p.relative_to(ROOT)}")
    return out


def main_guard(fn) -> int:
    """Runs a figure's main(); a missing result is a one-line error and exit 1, not a traceback."""
    try:
        fn()
    except MissingResult as e:
        print(f"{Path(sys.argv[0]).name}: {e}", file=sys.stderr)
        return 1
    return 0
