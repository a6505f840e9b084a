#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Checks the built paper as a reader sees it (the last step of `make paper`); exit 1 with one line per problem.

* The LaTeX log: no float or table wider than the text ("Overfull \\hbox" of more than 1 pt), no float taller
  than a page ("Float too large"), no undefined reference.
* The rendered pages (pdftoppm, 40 dpi, grey): nothing drawn in the right or bottom margin beyond the text block
  (plus a small tolerance): a table that runs off the page shows there, whatever LaTeX said.
* The text (pdftotext): no "??" of a missing reference, and no caption that repeats a number ("Table 8: Table 16."),
  the one numbering being LaTeX's.
* The numbering: results/MANIFEST.md's "Paper numbering" table (in the PDF -> artifact name of the configs and
  result files -> label) equals the numbers LaTeX gave the labels (paper/build/elastickv.aux), and names every
  labelled table and figure once.

--pages DIR also keeps the rendered pages there as PNG (to look at them).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from matplotlib import image

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "paper" / "build"
MANIFEST = ROOT / "results" / "MANIFEST.md"
MARGIN_CM = 2.2  # \usepackage[a4paper,margin=2.2cm]{geometry}
TOLERANCE_CM = 0.3  # page numbers sit below the text block; a few pixels of anti-aliasing
DPI = 40


def log_problems(log: str) -> list[str]:
    out = []
    for m in re.finditer(r"Overfull \\hbox \(([0-9.]+)pt too wide\)[^\n]*", log):
        if float(m.group(1)) > 1.0:
            out.append(f"elastickv.log: {m.group(0)} (a table or line wider than the text)")
    out += [f"elastickv.log: {m.group(0)}" for m in re.finditer(r"[^\n]*Float too large[^\n]*", log)]
    out += [f"elastickv.log: {m.group(0)}" for m in re.finditer(r"[^\n]*(Reference|Citation)[^\n]*undefined[^\n]*", log)]
    return out


def page_problems(pdf: Path, keep: Path | None) -> list[str]:
    """Ink in the right margin or below the text block of any rendered page."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["pdftoppm", "-r", str(DPI), "-gray", "-png", str(pdf), f"{tmp}/page"], check=True)
        out = []
        pages = sorted(Path(tmp).glob("page-*.png"), key=lambda p: int(p.stem.split("-")[-1]))
        for p in pages:
            img = image.imread(str(p))
            if img.ndim == 3:
                img = img[..., 0]
            h, w = img.shape
            px = DPI / 2.54
            right = int(w - (MARGIN_CM - TOLERANCE_CM) * px)
            bottom = int(h - (MARGIN_CM - TOLERANCE_CM - 1.0) * px)  # the page number lies about 1 cm below
            ink = img < 0.5
            if ink[:, right:].any():
                out.append(f"page {p.stem.split('-')[-1]}: something is drawn in the right margin "
                           f"({int(ink[:, right:].sum())} dark pixels): a table or figure runs off the page")
            if ink[bottom:, :].any():
                out.append(f"page {p.stem.split('-')[-1]}: something is drawn below the text block")
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / p.name).write_bytes(p.read_bytes())
        if not pages:
            out.append(f"{pdf}: no page rendered")
    return out


def text_problems(pdf: Path) -> list[str]:
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    out = []
    if "??" in text:
        out.append("the PDF shows ?? (a reference LaTeX could not resolve)")
    for m in re.finditer(r"(Table|Figure) [0-9]+: *(Tables?|Figure|Supplementary) [0-9]*", text):
        out.append(f"a caption repeats a number: {m.group(0)!r}")
    return out


def aux_numbers(aux: str) -> dict[str, str]:
    """label -> the number LaTeX gave it (tables and figures: labels tab:* and fig:*)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"\\newlabel\{((?:tab|fig):[^}]*)\}\{\{([^}]*)\}", aux)}


def manifest_numbering(text: str) -> list[tuple[str, str, str]]:
    """(in the PDF, artifact, label) rows of MANIFEST.md's "Paper numbering" table."""
    part = text.split("## Paper numbering", 1)
    if len(part) < 2:
        return []
    rows = []
    for line in part[1].splitlines():
        m = re.match(r"\|\s*(Table|Figure) ([0-9]+)\s*\|\s*([^|]+?)\s*\|\s*`([^`]+)`\s*\|", line)
        if m:
            rows.append((f"{m.group(1)} {m.group(2)}", m.group(3), m.group(4)))
        elif line.startswith("## "):
            break
    return rows


def numbering_problems(aux: str, manifest: str) -> list[str]:
    got = aux_numbers(aux)
    rows = manifest_numbering(manifest)
    if not rows:
        return ["results/MANIFEST.md has no \"Paper numbering\" table (in the PDF | artifact | `label`)"]
    out = []
    labels = [r[2] for r in rows]
    for lab in sorted(set(got) - set(labels)):
        kind = "Table" if lab.startswith("tab:") else "Figure"
        out.append(f"MANIFEST.md's Paper numbering lacks {kind} {got[lab]} (`{lab}`)")
    for shown, artifact, lab in rows:
        if labels.count(lab) > 1:
            out.append(f"MANIFEST.md's Paper numbering names `{lab}` more than once")
        kind = "Table" if lab.startswith("tab:") else "Figure"
        if lab not in got:
            out.append(f"MANIFEST.md's Paper numbering names `{lab}` ({artifact}), which the paper does not have")
        elif shown != f"{kind} {got[lab]}":
            out.append(f"MANIFEST.md says `{lab}` ({artifact}) is {shown}; the PDF numbers it {kind} {got[lab]}")
    return sorted(set(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=Path, default=None, help="also keep the rendered pages (PNG) in this folder")
    args = ap.parse_args()
    pdf, log, aux = BUILD / "elastickv.pdf", BUILD / "elastickv.log", BUILD / "elastickv.aux"
    missing = [p for p in (pdf, log, aux) if not p.is_file()]
    if missing:
        print(f"check_pdf: {missing[0].relative_to(ROOT)} is missing; build the paper first (make paper)", file=sys.stderr)
        return 1
    problems = log_problems(log.read_text(errors="replace"))
    problems += page_problems(pdf, args.pages)
    problems += text_problems(pdf)
    problems += numbering_problems(aux.read_text(errors="replace"), MANIFEST.read_text())
    for p in problems:
        print(f"check_pdf: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_pdf: {pdf.relative_to(ROOT)} reads cleanly (margins, references, captions, numbering)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
