# SPDX-License-Identifier: Apache-2.0
"""Triggers, sinks and statistics per sequence; K-shift; warm-up.

* llama-perplexity with several sequences in parallel (one stream each) and in one unified stream:
  every sequence gets its own passes at its own positions, its own statistic (group), and its own
  first SINK positions protected.
* llama-completion with context shift: after the K cache is re-rotated, the next pass thresholds
  every K cell again (zeros do not survive RoPE) while V cells are left alone (incremental mode).
* A warm-up decode never triggers a pass, even with WARM = 0 and EVICT_EVERY = 1.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from elastickv import dump, logparse, paths, stats
from elastickv import reference as ref


@pytest.mark.parametrize("unified", [False, True], ids=["streams", "unified"])
def test_parallel_sequences(llama, tmp_path, unified):
    stats_path, dump_dir = tmp_path / "s.jsonl", tmp_path / "dump"
    env = {"ELASTICKV": "1", "ELASTICKV_PRESET": "sweet", "ELASTICKV_STATS": str(stats_path),
           "ELASTICKV_DUMP": str(dump_dir), "ELASTICKV_SINK": "32"}
    # -c 256 -b 1024: llama-perplexity decodes 4 chunks at once, one sequence each
    flags = ["-fa", "on"] + (["-kvu"] if unified else [])
    r = llama.tool("llama-perplexity", ["-c", "256", "-b", "1024", "-ub", "64", "--chunks", "4", "-t", "2", "-lv", "4",
                                        "-f", paths.relative(paths.WIKITEXT_TEST)] + flags, env=env)
    assert r.rc == 0, r.log[-3000:]
    assert "n_seq=4" in r.log
    assert ("1 stream(s), 4 group(s)" if unified else "4 stream(s), 1 group(s)") in r.log
    configs, heads = stats.read(stats_path)
    heads = [h for h in heads if h["ctx"] == configs[-1]["ctx"]]
    per_seq = defaultdict(set)
    for h in heads:
        per_seq[h["seq"]].add(h["pos_max"])
    assert set(per_seq) == {0, 1, 2, 3}
    assert all(v == {127, 191, 255} for v in per_seq.values())  # each sequence on its own schedule

    for ctx, p in dump.passes(dump_dir):
        if ctx != configs[-1]["ctx"]:
            continue
        d = dump.load(dump_dir, ctx, p)
        cells = d.cells["k"]
        streams, pos, code = cells[:, 0], cells[:, 2], cells[:, 3]
        groups = code & ref.GROUP_MASK
        process = (code & ref.PROCESS) != 0
        assert not (process & (pos < 32)).any()  # each sequence's first SINK positions are protected
        seqs = [s["seq"] for s in d.manifest["seqs"]]
        if unified:
            assert set(np.unique(groups)) <= set(seqs) and (streams == 0).all()
            assert (pos < 32).sum() == 32 * len(seqs)  # one sink run per sequence in the shared stream
        else:
            assert (groups == 0).all() and set(np.unique(streams)) == set(seqs)
        # per-sequence statistic: each group is thresholded with its own tau
        before, after = d.values(10, "k", "before"), d.values(10, "k", "after")
        key = streams * 1000 + groups
        for k in np.unique(key[process]):
            sel = key == k
            mask = ref.threshold_dump(before[sel], np.zeros(sel.sum(), np.int32), process[sel], 0.45)
            assert np.array_equal(np.where(mask, 0.0, before[sel]), after[sel])


def test_k_shift_reprocesses_k_cells(llama, tmp_path):
    stats_path = tmp_path / "s.jsonl"
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(paths.WIKITEXT_TEST.read_text()[:600])
    env = {"ELASTICKV": "1", "ELASTICKV_MODE": "incremental", "ELASTICKV_VERBOSE": "1", "ELASTICKV_SINK": "16",
           "ELASTICKV_WARM": "64", "ELASTICKV_EVICT_EVERY": "32", "ELASTICKV_STATS": str(stats_path)}
    r = llama.tool("llama-completion", ["-f", str(prompt), "-c", "256", "-n", "200", "--context-shift", "--ignore-eos",
                                        "--temp", "0", "-no-cnv", "-t", "2"], env=env)
    assert r.rc == 0, r.log[-3000:]
    passes = logparse.elastickv_passes(r.log)
    shifted = [i for i in range(1, len(passes)) if passes[i]["pos_max"] < passes[i - 1]["pos_max"]]
    assert shifted, "the context never shifted"
    _, heads = stats.read(stats_path)
    n = defaultdict(float)
    n_obs = defaultdict(float)
    for h in heads:
        n[(h["pass"], h["kv"])] += h["n"]
        n_obs[(h["pass"], h["kv"])] += h["n_obs"]
    p = passes[shifted[0]]["pass"]
    sink_values = 16 * 30 * 3 * 64
    assert n[(p, "k")] == n_obs[(p, "k")] - sink_values, "after a K-shift every non-sink K cell is thresholded again"
    assert n[(p, "v")] < n[(p, "k")] / 4, "V is not re-rotated: only new V cells are thresholded"


def test_no_pass_on_warmup_decode(llama, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("The quick brown fox jumps over the lazy dog. " * 4)
    env = {"ELASTICKV": "1", "ELASTICKV_WARM": "0", "ELASTICKV_EVICT_EVERY": "1", "ELASTICKV_SINK": "0",
           "ELASTICKV_VERBOSE": "1"}
    r = llama.tool("llama-completion", ["-f", str(prompt), "-c", "256", "-n", "2", "--temp", "0", "-no-cnv", "-t", "2", "-lv", "4"], env=env)
    assert r.rc == 0, r.log[-3000:]
    assert "warming up the model" in r.log
    passes = logparse.elastickv_passes(r.log)
    assert passes, "no pass at all"
    # the first pass comes from the prompt (not from the 1-2 token warm-up decode) and no rewind happened
    assert passes[0]["pos_max"] > 10 and passes[0]["epoch"] == 0
