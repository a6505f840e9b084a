# SPDX-License-Identifier: Apache-2.0
"""scripts/plot/check_pdf.py, the last step of `make paper`: each of its checks fails on what it is there to catch
(an overfull table, a float too large, a page with ink in the margin, a caption that repeats a number, a
MANIFEST numbering that does not match LaTeX's) and passes on a clean case. The rendered-page check needs
poppler's pdftoppm (installed by `make paper`); without it that one test is skipped, never passed."""

from __future__ import annotations

import importlib.util
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from elastickv import paths  # noqa: E402

_spec = importlib.util.spec_from_file_location("check_pdf", paths.ROOT / "scripts" / "plot" / "check_pdf.py")
cp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cp)


def test_log_problems():
    assert cp.log_problems("Overfull \\hbox (0.5pt too wide) in paragraph at lines 1--2\n") == []
    got = cp.log_problems("Overfull \\hbox (20.31096pt too wide) in paragraph at lines 2--259\n"
                          "LaTeX Warning: Float too large for page by 12.0pt on input line 7.\n"
                          "LaTeX Warning: Reference `tab:x' on page 3 undefined on input line 9.\n")
    assert len(got) == 3 and "20.31096pt" in got[0] and "Float too large" in got[1] and "tab:x" in got[2]


def test_numbering_against_the_aux():
    aux = "\\newlabel{tab:a}{{1}{2}{x}{table.1}{}}\n\\newlabel{fig:b}{{1}{3}{y}{figure.1}{}}\n\\newlabel{sec:c}{{2}{3}}\n"
    good = "## Paper numbering\n\n| in the PDF | artifact | label |\n|---|---|---|\n| Table 1 | Table 16 | `tab:a` |\n" \
           "| Figure 1 | Figure 9 | `fig:b` |\n"
    assert cp.numbering_problems(aux, good) == []
    wrong = good.replace("| Table 1 | Table 16", "| Table 2 | Table 16")
    assert cp.numbering_problems(aux, wrong) == ["MANIFEST.md says `tab:a` (Table 16) is Table 2; the PDF numbers it Table 1"]
    lacking = good.replace("| Figure 1 | Figure 9 | `fig:b` |\n", "")
    assert cp.numbering_problems(aux, lacking) == ["MANIFEST.md's Paper numbering lacks Figure 1 (`fig:b`)"]
    assert "no \"Paper numbering\" table" in cp.numbering_problems(aux, "nothing")[0]


def test_the_archive_manifest_has_a_numbering_table():
    rows = cp.manifest_numbering((paths.ROOT / "results" / "MANIFEST.md").read_text())
    assert len(rows) >= 30 and len({r[2] for r in rows}) == len(rows)
    assert ("Table 15", "Table 16", "tab:h2h") in rows


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler's pdftoppm is not installed (make paper installs it)")
def test_rendered_pages_catch_ink_in_the_margin(tmp_path):
    def page(x: float, name: str):
        fig = plt.figure(figsize=(8.27, 11.69))  # A4
        fig.text(x, 0.5, "a table cell", fontsize=14, ha="left")
        fig.savefig(tmp_path / name)
        plt.close(fig)
        return tmp_path / name

    assert cp.page_problems(page(0.3, "inside.pdf"), None) == []
    bad = cp.page_problems(page(0.95, "off.pdf"), None)
    assert len(bad) == 1 and "right margin" in bad[0]
