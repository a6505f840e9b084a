#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 3: needle-in-a-haystack heat maps, hook off (baseline) and ElasticKV side by side.

One row of panels per model with a grid in results/niah/<model>.json (written by scripts/eval/f5_niah.py):
x = context length (tokens), y = needle depth, green = the 7-digit number was in the greedy answer,
red = it was not. Cells where the needle lay in the SINK positions (never thresholded) are marked "s" in the
ElasticKV panel. Reads results/ only; writes paper/figures/fig3_niah_heatmap.pdf and .png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import niahplot  # noqa: E402
import plotcommon  # noqa: E402

LABELS = {"baseline": "baseline (hook off)", "elastickv": "ElasticKV (sweet)"}


def main() -> None:
    niahplot.heatmaps(niahplot.grids("niah"), LABELS, "fig3_niah_heatmap",
                      "green: the needle's number is in the greedy answer; red: it is not. s: the needle starts "
                      "inside the first SINK positions, which ElasticKV never thresholds.")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(plotcommon.main_guard(main))
