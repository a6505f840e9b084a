#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Figure 11: needle-in-a-haystack heat maps per policy at 50 % kept (Table 18): hook off, ElasticKV and the
token policies of the hook on the same prompts, flash attention off. One row of panels per model with a grid
in results/niah_policies/<model>.json (scripts/eval/f5_niah.py --config table18_niah_policies).
Reads results/ only; writes paper/figures/fig11_niah_policies.pdf and .png."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import niahplot  # noqa: E402
import plotcommon  # noqa: E402



def row_settings(row: dict) -> str:
    """A row's hook settings as written in the config, e.g. "h2o: budget 0.5, sink 64"."""
    keys = [k for k in row if k not in ("name", "policy")]
    return f"{row['name']}: " + (", ".join(f"{k} {row[k]}" for k in keys) if keys else "hook off")


def main() -> None:
    aggs = niahplot.grids("niah_policies", "scripts/eval/f5_niah.py --config table18_niah_policies")
    cfg = aggs[0]["config"]
    niahplot.heatmaps(aggs, plotcommon.POLICY_LABELS, "fig11_niah_policies",
                      "green: the needle's number is in the greedy answer; red: it is not. s: the needle starts inside "
                      "the first SINK positions, which no policy evicts or thresholds (its tokens beyond them are not protected). "
                      "flash attention "
                      f"{cfg['flash_attn']}. Rows: " + "; ".join(row_settings(r) for r in cfg["rows"]) + ".",
                      panel_width=2.2)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(plotcommon.main_guard(main))
