#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Compression accounting table (LaTeX): nominal, bitmap and resident figures with bits per value.
Reads results/f7_compression_proof.json -> paper/generated/tab14_compression.tex."""

import argparse
import sys

import textable as tt
from elastickv import frame


def main() -> None:
    df = frame.entries(tt.load("f7_compression_proof.json"), key="rows")
    rows = [[tt.esc(r["model"]), str(r["ctx"]), tt.esc(r["row"]), tt.esc(r["cache"]), tt.num(r["nominal"]) + r"$\times$",
             tt.num(r["bitmap"]) + r"$\times$", tt.num(r["resident"]) + r"$\times$", tt.num(r["bits_per_value_resident"], 2),
             tt.num(r["bits_per_value_bitmap"], 2), tt.num(r["kld"], 4)]
            for r in df[(df["table"] == "Table 2") & (df["row"] != "baseline")].to_dict("records")]
    table = tt.tabular("llllrrrrrr", ["model", "$c$", "row", "cache", "nominal", "bitmap", "resident",
                                      "bits/value (real)", "bits/value (bitmap)", "KLD"], rows)
    tt.write("tab14_compression", table, {}, "scripts/plot/tab14_compression.py")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    sys.exit(tt.main_guard(main))
