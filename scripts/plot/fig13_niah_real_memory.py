#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 13: needle-in-a-haystack heat maps at real-memory points (Table 20): llama.cpp's caches alone and token
eviction that frees cells through the smallest physical cap, alone and stacked with q8_0/q4_0, flash attention on.
Reads results/niah_real_memory/<model>.json (scripts/eval/f5_niah.py --config table20_niah_real_memory);
writes paper/figures/fig13_niah_real_memory.pdf and .png."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import niahplot  # noqa: E402
import plotcommon  # noqa: E402
from fig11_niah_policies import row_settings  # noqa: E402  (scripts/plot)


def main() -> None:
    aggs = niahplot.grids("niah_real_memory", "scripts/eval/f5_niah.py --config table20_niah_real_memory")
    cfg = aggs[0]["config"]
    niahplot.heatmaps(aggs, {}, "fig13_niah_real_memory",
                      "green: the needle's number is in the greedy answer; red: it is not. s: the needle starts inside "
                      "the first SINK positions. flash attention "
                      f"{cfg['flash_attn']}. Rows: " + "; ".join(row_settings(r) for r in cfg["rows"]) + ".",
                      panel_width=2.2)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(plotcommon.main_guard(main))
