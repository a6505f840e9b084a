# SPDX-License-Identifier: Apache-2.0
"""Routing metrics (scripts/elastickv/routing.py) on hand-built arrays with known answers, and the synthetic
routing suite generator (scripts/elastickv/routing_suite.py): determinism, spans, lengths, scoring, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from elastickv import routing as R
from elastickv import routing_suite as S

SUITE = Path(__file__).resolve().parents[1] / "scripts" / "elastickv" / "routing_suite.py"


# ---------------------------------------------------------------------------------------------------------
# GER and eviction fraction


def _kept(n_layer=2, n_head=3, n_cells=5) -> np.ndarray:
    return np.ones((n_layer, n_head, n_cells), dtype=bool)


def test_ger_kept_by_one_head_is_not_global():
    k = _kept()
    k[:, :, 2] = False
    k[1, 2, 2] = True  # the only route left to cell 2
    assert R.global_eviction_ratio(k, [2]) == 0.0
    # per layer: layer 0 lost cell 2 in every head, layer 1 still has it in head 2
    assert R.global_eviction_ratio(k, [2], scope="layer").tolist() == [1.0, 0.0]


def test_ger_evicted_everywhere_is_global():
    k = _kept()
    k[:, :, 2] = False
    k[0, 1, 3] = False  # cell 3 evicted in one head only
    assert R.global_eviction_ratio(k, [2]) == 1.0
    assert R.global_eviction_ratio(k, [2, 3]) == 0.5
    assert R.global_eviction_ratio(k, np.array([2, 3, 3])) == 0.5  # duplicates counted once
    assert R.global_eviction_ratio(k, [0, 1, 2, 4]) == 0.25
    assert R.global_eviction_ratio(k, [2, 3], scope="layer").tolist() == [0.5, 0.5]


def test_ger_layer_scope_differs_from_model_scope():
    k = _kept(n_layer=3, n_head=2, n_cells=4)
    k[0, :, 1] = False  # layer 0 dropped cell 1 in both heads
    k[2, :, 0] = False  # layer 2 dropped cell 0 in both heads
    assert R.global_eviction_ratio(k, [0, 1]) == 0.0
    assert R.global_eviction_ratio(k, [0, 1], scope="layer").tolist() == [0.5, 0.0, 0.5]


def test_eviction_fraction():
    k = _kept(n_layer=2, n_head=2, n_cells=3)
    k[0, 0, 1] = False
    k[1, :, 1] = False
    k[1, 1, 0] = False
    # over cells {0, 1}: 8 (layer, head, cell) entries, 4 not kept
    assert R.eviction_fraction(k, [0, 1]) == 0.5
    assert R.eviction_fraction(k, [2]) == 0.0
    assert R.eviction_fraction(k, [1]) == 0.75


def test_ger_bad_inputs():
    k = _kept()
    with pytest.raises(ValueError, match="empty"):
        R.global_eviction_ratio(k, [])
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        R.global_eviction_ratio(k[0], [1])
    with pytest.raises(ValueError, match="bool"):
        R.global_eviction_ratio(k.astype(np.int8), [1])
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        R.global_eviction_ratio(k, [5])
    with pytest.raises(ValueError, match="integer"):
        R.eviction_fraction(k, [1.0])
    with pytest.raises(ValueError, match="scope"):
        R.global_eviction_ratio(k, [1], scope="head")


# ---------------------------------------------------------------------------------------------------------
# head consensus


def test_head_consensus_known_argmaxes_and_ties():
    s = np.zeros((2, 4, 6))
    # layer 0: heads -> cells 1, 1, 3, 5 -> 3 distinct / 4 heads
    for h, c in enumerate([1, 1, 3, 5]):
        s[0, h, c] = 1.0
    # layer 1: every head ties between cells 4 and 2 -> lowest index (2) for all -> 1 distinct
    s[1, :, 4] = s[1, :, 2] = 7.0
    valid = np.ones(6, dtype=bool)
    assert R.head_consensus(s, valid).tolist() == [0.75, 0.25]
    assert R.mean_head_consensus(s, valid) == 0.5


def test_head_consensus_valid_excludes_sinks():
    s = np.zeros((1, 3, 5))
    s[0, :, 0] = 100.0  # every head's top cell is the sink
    s[0, 0, 2], s[0, 1, 3], s[0, 2, 3] = 1.0, 2.0, 3.0
    assert R.head_consensus(s, np.ones(5, dtype=bool)).tolist() == [pytest.approx(1 / 3)]
    valid = R.valid_cells(5, sink=1)
    assert valid.tolist() == [False, True, True, True, True]
    assert R.head_consensus(s, valid).tolist() == [pytest.approx(2 / 3)]


def test_head_consensus_bad_inputs():
    s = np.zeros((2, 2, 4))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        R.head_consensus(s, np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        R.head_consensus(s[0], np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="no cell"):
        R.head_consensus(s, np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="sink"):
        R.valid_cells(4, sink=4)


# ---------------------------------------------------------------------------------------------------------
# element-level analogue


def test_element_global_zero_ratio():
    k = np.ones((2, 4, 2, 4), dtype=np.float32)  # [layer, cell, head, dim]
    k[0, 1, :, :2] = 0.0  # layer 0, cell 1: half zero in both heads -> evicted at 0.5
    k[0, 2, 0, :] = 0.0  # layer 0, cell 2: all zero in head 0 only -> not evicted
    k[1, 1, :, :3] = -0.0  # layer 1, cell 1: 3/4 zero (negative zero counts) in both heads
    k[1, 3, :, 0] = 0.0  # layer 1, cell 3: 1/4 zero in both heads
    assert R.element_global_zero_ratio(k, [1, 2]).tolist() == [0.5, 0.5]
    assert R.element_global_zero_ratio(k, [1, 2, 3], min_zero_frac=0.75).tolist() == [0.0, pytest.approx(1 / 3)]
    assert R.element_global_zero_ratio(k, [1, 3], min_zero_frac=0.25).tolist() == [0.5, 1.0]
    k[1, 3, 1, 0] = 1e-30  # tiny is not zero: head 1 of cell 3 now has no zero
    assert R.element_global_zero_ratio(k, [1, 3], min_zero_frac=0.25).tolist() == [0.5, 0.5]
    summary = R.element_ger_summary(k, [1, 2, 3], min_zero_frac=0.75)
    assert summary["max"] == pytest.approx(1 / 3) and summary["mean"] == pytest.approx(1 / 6)
    assert summary["per_layer"] == [0.0, pytest.approx(1 / 3)]


def test_element_bad_inputs():
    k = np.zeros((2, 3, 2, 4))
    with pytest.raises(ValueError, match=r"\(3, 2, 4\)"):
        R.element_global_zero_ratio(k[0], [0])
    with pytest.raises(ValueError, match="min_zero_frac"):
        R.element_global_zero_ratio(k, [0], min_zero_frac=0.0)
    with pytest.raises(ValueError, match="empty"):
        R.element_ger_summary(k, np.array([], dtype=int))


def test_pearson():
    assert R.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert R.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert R.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(R.pearson([0.1, 0.1, 0.1], [1, 2, 3]))
    with pytest.raises(ValueError):
        R.pearson([1, 2], [1, 2, 3])


# ---------------------------------------------------------------------------------------------------------
# synthetic routing suite


def test_generate_deterministic_and_seed_dependent():
    a = S.generate(3, 2, 300)
    assert a == S.generate(3, 2, 300)
    b = S.generate(4, 2, 300)
    assert [x["context"] for x in a] != [x["context"] for x in b]
    # an item does not depend on which other tasks were requested
    only = S.generate(3, 2, 300, tasks=("multi_hop",))
    assert only == [x for x in a if x["task"] == "multi_hop"]


@pytest.mark.parametrize("target", [300, 800])
def test_generate_spans_counts_and_length(target):
    n = 5
    items = S.generate(11, n, target)
    assert [x["task"] for x in items] == [t for t in S.TASKS for _ in range(n)]
    assert len({x["id"] for x in items}) == len(items)
    for x in items:
        ctx, ans = x["context"], x["answer"]
        assert x["answer_spans"], x["id"]
        for start, end in x["answer_spans"] + x["distractor_spans"]:
            assert 0 <= start < end <= len(ctx)
            assert ctx[start:end].endswith(".") and (start == 0 or ctx[start - 1] == " ")
        texts = [ctx[s:e] for s, e in x["answer_spans"]]
        assert any(S.score(t, ans) for t in texts), (x["id"], ans, texts)  # whole-word occurrence
        assert all(not S.score(ctx[s:e], ans) for s, e in x["distractor_spans"]), x["id"]
        assert abs(len(ctx.split()) - target) <= 0.25 * target, (x["id"], len(ctx.split()))
    hops = {len(x["answer_spans"]) for x in items if x["task"] == "multi_hop"}
    assert hops <= {2, 3}
    coref = [x for x in items if x["task"] == "coreference"]
    assert all(len(x["answer_spans"]) == 2 and x["answer_spans"][0][0] < x["answer_spans"][1][0] for x in coref)


def test_multi_hop_final_number_in_span():
    for x in S.generate(5, 8, 200, tasks=("multi_hop",)):
        last = [x["context"][s:e] for s, e in x["answer_spans"] if "holds the number" in x["context"][s:e]]
        assert len(last) == 1 and last[0].endswith(f" {x['answer']}.")


def test_filler_text_is_used():
    text = "Alpha beta gamma delta. Epsilon zeta eta theta iota! Kappa lambda mu nu?"
    items = S.generate(0, 1, 120, filler_text=text)
    assert all("Epsilon zeta eta theta iota!" in x["context"] for x in items)
    with pytest.raises(ValueError):
        S.generate(0, 1, 120, filler_text="no")


def test_prompt_text():
    x = S.generate(0, 1, 100, tasks=("disambiguation",))[0]
    assert S.prompt_text(x) == (f"Read the text and answer the question with a single word or number.\n\n"
                                f"{x['context']}\n\nQuestion: {x['question']}")


def test_score():
    assert S.score("The answer is 7319.", "7319")
    assert not S.score("The answer is 73190.", "7319")
    assert not S.score("The answer is 17319.", "7319")
    assert not S.score("I think\n7319", "7319")  # only the first non-blank line counts
    assert S.score("\n  7319\nbecause", "7319")
    assert S.score("In the KITCHEN.", "kitchen")
    assert S.score("７３１９", "7319")  # NFKC: full-width digits
    assert not S.score("kitchens", "kitchen")


def test_cli(tmp_path):
    r = subprocess.run([sys.executable, str(SUITE), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--target-words" in r.stdout
    out = tmp_path / "suite.jsonl"
    r = subprocess.run([sys.executable, str(SUITE), "--seed", "2", "--n-per-task", "2", "--target-words", "150",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == S.generate(2, 2, 150)
    assert list(tmp_path.iterdir()) == [out]  # no temp file left behind
