# SPDX-License-Identifier: Apache-2.0
"""The learned eviction policy's network (issue 14): its training is reproducible from its script and seed, it
learns from validation text only, and the archived weights are the ones its training record names.

The hook's use of the network (its outputs on the dumped keys and the kept set, against policies/learned.py) is
tested in tests/test_policies.py; here the training: scripts/analysis/train_learned.py on one chunk of WikiText-2
validation text (the H2O run with dumps is made once, in build/cache/learned), a few thousand samples, one epoch."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from elastickv import paths
from elastickv.policies import learned

SCRIPT = paths.ROOT / "scripts/analysis/train_learned.py"
SMALL = ["--set", "chunks=1", "--set", "epochs=1", "--set", "max_samples=4000"]


def train(tmp_path, name: str, *extra: str) -> subprocess.CompletedProcess:
    out = tmp_path / name
    return subprocess.run([sys.executable, str(SCRIPT), *SMALL, "--set", f"output={out}/train.json",
                           "--set", f"weights={out}/mlp.bin", *extra], cwd=paths.ROOT, capture_output=True, text=True,
                          timeout=900)


def test_training_is_reproducible_from_its_seed(tmp_path):
    runs = {name: train(tmp_path, name, "--set", f"seed={seed}") for name, seed in
            (("a", 7), ("b", 7), ("c", 8))}
    for name, r in runs.items():
        assert r.returncode == 0, r.stderr[-2000:]
    a, b, c = ((tmp_path / n / "mlp.bin").read_bytes() for n in "abc")
    assert a == b, "the same data and seed gave other weights"
    assert a != c, "another seed gave the same weights"
    rec = json.loads((tmp_path / "a" / "train.json").read_text())
    d = rec["data"]
    assert d["weights_sha256"] == hashlib.sha256(a).hexdigest()
    assert rec["config"]["data"].endswith("wiki.valid.raw")
    assert d["text_sha256"] == hashlib.sha256(paths.WIKITEXT_VALID.read_bytes()).hexdigest()
    assert d["samples"] == 4000 and d["train"] + d["holdout"] == 4000
    assert 0 < d["kept_fraction"] < 1
    # the network reads what the hook reads: a float32 file of the notebook's shape
    weights = learned.read_weights(tmp_path / "a" / "mlp.bin")
    assert [W.shape for W, _ in weights] == [(128, 64), (64, 128), (1, 64)]


def test_training_on_the_test_text_is_refused(tmp_path):
    r = train(tmp_path, "t", "--set", "data=data/wikitext-2-raw/wiki.test.raw")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "train_learned: data 'data/wikitext-2-raw/wiki.test.raw': the network is trained on validation text, never "
        "the test text"]


def test_weights_file_round_trip_and_logits(tmp_path):
    rng = np.random.default_rng(0)
    weights = [(rng.normal(size=(o, i)).astype(np.float32), rng.normal(size=o).astype(np.float32))
               for i, o in zip(learned.DIMS[:-1], learned.DIMS[1:])]
    path = learned.write_weights(tmp_path / "w.bin", weights)
    back = learned.read_weights(path)
    assert all(np.array_equal(W, W2) and np.array_equal(b, b2) for (W, b), (W2, b2) in zip(weights, back))
    x = rng.normal(size=(50, 64))
    h = x
    for li, (W, b) in enumerate(weights):  # the same network with numpy's own matrix products
        h = h @ W.astype(np.float64).T + b
        h = np.maximum(h, 0) if li < 2 else h
    np.testing.assert_allclose(learned.logits(weights, x), h[:, 0], rtol=1e-12, atol=1e-12)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="more than its layer sizes say"):
        learned.read_weights(path)


def test_archived_weights_are_the_ones_their_training_record_names():
    rec_path = paths.RESULTS / "learned" / "train_learned.json"
    rec = json.loads(rec_path.read_text())
    d = rec["data"]
    weights = paths.ROOT / d["weights"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == d["weights_sha256"]
    assert rec["config"]["data"] == "data/wikitext-2-raw/wiki.valid.raw"
    assert d["text_sha256"] == hashlib.sha256(paths.WIKITEXT_VALID.read_bytes()).hexdigest()
    assert len(d["loss_per_epoch"]) == rec["config"]["epochs"]
    assert d["holdout_auc"] > 0.5  # it learned something of H2O's choices
