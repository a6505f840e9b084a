# SPDX-License-Identifier: Apache-2.0
"""The baselines of ELASTICKV_POLICY inside real llama.cpp runs equal their numpy definitions
(scripts/elastickv/policies), evict exactly, and vanish at a budget of 100 %.

* Token policies (streaming, h2o, scissorhands, pyramidkv, random_tokens, sliding_window, lru, lru_fifo): for every
  pass, layer and KV head of one chunk of WikiText-2 (-c 512, -b = -ub = 64, -fa off), the reference selection
  applied to the dumped scores (lru: the recency updated from them) and evicted flags before the pass gives
  exactly the flags after it; the flags and the recency carry over from pass to pass; sinks (but for
  sliding_window, which has none) and the recent window are never evicted; each head keeps exactly its budget.
  lru_fifo keeps StreamingLLM's cells; lru refreshes the recency of used cells and keeps another set.
  The reference's settings (budget, recent window, heavy ratio, seed, pyramid beta) come from the
  ELASTICKV_* variables the test set, read by the Python mirror of the variable table, never from what the
  hook wrote; the hook's own reading must equal them. The cells a pass handles must be exactly the cache's
  own occupied cells of the sequence (llama.cpp's cell table, dumped beside them), at positions 0..pos_max.
* Scores are attention: the H2O and ScissorHands scores the hook accumulated in the graph equal the scores
  recomputed in numpy from the dumped queries (Q after RoPE) and keys, with the causal mask and the
  evictions of the earlier passes, for every layer and pass.
* Exact eviction: an evicted cell receives no attention afterwards (its accumulated H2O score is frozen
  bit for bit), and every query distributes exactly one unit of attention per query head (the H2O scores
  of a head sum to G x the queries so far, G query heads per KV head).
* Element policies (random_entries, topk_entries): the dumped K/V rows after each pass equal the reference
  applied to the rows before it; cells in the sinks are untouched.
* Budget 100 %: the logits (--kl-divergence-base) are byte-identical to the hook off, for every policy.
* Flash attention on, or a budget missing or meaningless for the policy, is a clear error.
To add a case, add a row to TOKEN_CASES.
"""

from __future__ import annotations

import filecmp
import math
import re

import numpy as np
import pytest

from elastickv import dump, envvars, paths, policies
from elastickv.policies import common, learned, lru, semantic

SINK = 4
# policy, extra hook variables
TOKEN_CASES = [
    ("streaming", {"ELASTICKV_BUDGET": "0.4"}),
    ("h2o", {"ELASTICKV_BUDGET": "0.4"}),
    ("h2o", {"ELASTICKV_BUDGET": "150", "ELASTICKV_RECENT": "16"}),
    ("scissorhands", {"ELASTICKV_BUDGET": "40%"}),
    ("pyramidkv", {"ELASTICKV_BUDGET": "0.4", "ELASTICKV_PYRAMID_BETA": "4"}),
    ("random_tokens", {"ELASTICKV_BUDGET": "0.3", "ELASTICKV_SEED": "7"}),
    ("sliding_window", {"ELASTICKV_BUDGET": "0.4"}),
    ("lru", {"ELASTICKV_BUDGET": "0.4"}),
    ("lru", {"ELASTICKV_BUDGET": "100", "ELASTICKV_HEAVY_RATIO": "1"}),
    ("lru_fifo", {"ELASTICKV_BUDGET": "0.4"}),
    ("semantic", {"ELASTICKV_BUDGET": "0.4", "ELASTICKV_CLUSTERS": "8"}),
    ("semantic", {"ELASTICKV_BUDGET": "0.3", "ELASTICKV_CLUSTER_KEYS": "mean", "ELASTICKV_SEED": "3"}),
    ("learned", {"ELASTICKV_BUDGET": "0.4", "ELASTICKV_LEARNED_WEIGHTS": "<random>"}),
]


def random_weights(path, seed: int = 0, dims=learned.DIMS):
    """A weights file of the notebook's shape with seeded random values (the kept set is checked against the numpy
    reference whatever the weights; training is tested in tests/test_learned.py)."""
    rng = np.random.default_rng(seed)
    return learned.write_weights(path, [(rng.normal(0, 1 / np.sqrt(i), (o, i)), rng.normal(0, 0.1, o))
                                        for i, o in zip(dims[:-1], dims[1:])])


def budget_from_env(env: dict[str, str]) -> common.Budget:
    """The budget settings of the ELASTICKV_* variables a test set, as the Python mirror of the variable table
    reads them (defaults included): the reference never takes them from the hook's own output."""
    r = envvars.resolve(env)
    b = common.parse_budget(env["ELASTICKV_BUDGET"])
    return common.Budget(fraction=b.fraction, cells=b.cells, recent=-1 if r["recent"] == "auto" else r["recent"],
                         heavy_ratio=r["heavy_ratio"], seed=r["seed"], beta=r["pyramid_beta"],
                         clusters=r["clusters"], cluster_keys=r["cluster_keys"],
                         learned_weights=r.get("learned_weights", ""))


def run_dumped(llama, tmp_path, policy, extra, chunks=1):
    folder = tmp_path / "dump"
    # logical eviction (cells stay allocated behind the bias): every pass lists all cells of the sequence;
    # freeing is tested in tests/test_real_memory.py
    env = {"ELASTICKV": "1", "ELASTICKV_POLICY": policy, "ELASTICKV_DUMP": str(folder)} | extra
    if env.get("ELASTICKV_LEARNED_WEIGHTS") == "<random>":
        env["ELASTICKV_LEARNED_WEIGHTS"] = str(random_weights(tmp_path / "mlp.bin"))
    if policy not in policies.POLICIES or policies.policy(policy).sinks:
        env["ELASTICKV_SINK"] = str(SINK)  # sliding_window keeps no sinks and refuses the variable
    if policy in policies.TOKEN_POLICIES:
        env["ELASTICKV_FREE"] = "0"
    r = llama.perplexity(["-fa", "off"], env=env, chunks=chunks)
    assert r.rc == 0, r.log[-3000:]
    return r, folder, env


def check_token_pass(P, b: common.Budget, folder, key, t: dump.TokenPass, prev: dump.TokenPass | None) -> None:
    """One pass of one sequence against the numpy definition, with the settings ``b`` the test set: the hook read
    them as set; its cells are exactly the cache's own occupied cells of the sequence, positions 0..n-1 in
    order; the flags carry over from its previous pass (new cells start un-evicted), and for every layer and KV
    head the reference selection on the dumped scores and flags gives exactly the flags after the pass, never
    evicts a sink or the newest cell, and keeps exactly the layer's budget."""
    m = t.manifest
    hook_read = (m["fraction"], m["cells"], m["recent"], m["heavy_ratio"], m["seed"], m["beta"])
    assert hook_read == (b.fraction, b.cells, b.recent, b.heavy_ratio, b.seed, b.beta), "the hook misread a variable"
    n = len(t.pos)
    assert np.array_equal(t.pos, np.arange(n)), "the sequence's own cells, positions 0..n-1 in order"
    ctx, pass_id, seq = key
    owned = dump.owned_cells(dump.kv_cells(folder, ctx, pass_id), seq)
    assert np.array_equal(t.cells[:, :3], owned), "the pass missed or added cells of the sequence"
    B = common.budget_cells(b, n)
    assert B == m["budget"]
    L, H, _ = t.after.shape
    if prev is not None:  # the flags carry over: what was evicted stays evicted
        assert np.array_equal(t.before[:, :, :prev.after.shape[2]], prev.after)
        assert not t.before[:, :, prev.after.shape[2]:].any()
    if P.recency:  # the recency carries over from the previous pass; a new cell starts at this pass
        assert t.recency is not None and t.recency.shape == t.after.shape
        if prev is not None:
            m_prev = prev.after.shape[2]
            carried = np.stack([np.stack([lru.recency_after(P, prev.recency[la, h], prev.score[la, h],
                                                            prev.manifest["pass"]) for h in range(H)]) for la in range(L)])
            assert np.array_equal(t.recency[:, :, :m_prev], carried), "the recency did not carry over"
            assert (t.recency[:, :, m_prev:] == m["pass"]).all(), "a new cell's recency is not this pass"
        else:
            assert (t.recency <= m["pass"]).all()
    assert m["sink"] == (SINK if P.sinks else 0)
    for layer in range(L):
        Bl = P.layer_budget(b, B, n, layer, L)
        keys = dump.token_keys(folder, ctx, pass_id, seq, layer) if P.clusters or P.learned else None
        if P.learned:  # the MLP's outputs on the dumped keys are the hook's, for every head of the layer
            want = learned.logits(learned.read_weights(b.learned_weights), semantic.mean_keys(keys)).astype(np.float32)
            assert np.array_equal(t.score[layer], np.broadcast_to(want, t.score[layer].shape)), ("logits", layer)
        for h in range(H):
            score = t.score[layer, h] if P.score != "none" else None
            if P.recency:
                score = lru.recency_after(P, t.recency[layer, h], score, m["pass"])
            if P.learned:
                score = t.score[layer, h]
            if P.clusters:  # the K-means recomputed from the dumped keys gives the hook's representatives
                mean = b.cluster_keys == "mean"
                x = semantic.mean_keys(keys) if mean else keys[:, h, :].astype(np.float64)
                cand, heavy = common.candidates(P, b, SINK, Bl, t.pos, t.before[layer, h])
                score = semantic.representatives(x, t.pos, cand, heavy, b.clusters, b.seed,
                                                 layer * 65536 + (0 if mean else h))
                assert np.array_equal(score, t.score[layer, h]), ("representatives", m["pass"], layer, h)
            ref = common.select(P, b, SINK, Bl, t.pos, score, t.before[layer, h])
            assert np.array_equal(ref, t.after[layer, h]), (m["seq"], m["pass"], layer, h)
            kept = ~t.after[layer, h]
            assert kept[:SINK].all() or not P.sinks, "a sink was evicted"
            assert kept[-1], "the newest cell was evicted"
            assert kept.sum() == Bl, (m["seq"], m["pass"], layer, h, kept.sum(), Bl)
    if P.score == "none" and not (P.clusters or P.learned):
        assert not t.score.any()


@pytest.mark.parametrize("policy, extra", TOKEN_CASES, ids=[f"{p}-{e['ELASTICKV_BUDGET']}" for p, e in TOKEN_CASES])
def test_token_policy_kept_set_equals_reference(llama, tmp_path, policy, extra):
    r, folder, env = run_dumped(llama, tmp_path, policy, extra)
    P = policies.policy(policy)
    b = budget_from_env(env)
    found = dump.token_passes(folder)
    assert len(found) == 7  # passes at pos_max 127, 191, ..., 511 (WARM 128, EVICT_EVERY 64)
    prev = None
    for i, key in enumerate(found):
        t = dump.load_token(folder, *key)
        assert t.manifest["policy"] == policy
        assert len(t.pos) == 128 + 64 * i  # the whole sequence so far
        check_token_pass(P, b, folder, key, t, prev)
        prev = t
    # something was evicted, and the run's kept fraction is the budget
    assert prev.after.any()
    if P.clusters:  # representatives were kept that the most recent fill alone would have evicted
        reps = prev.score.astype(bool) & ~prev.after
        assert reps.any() and (reps & (prev.pos < prev.pos[-1] - (~prev.after).sum(axis=2, keepdims=True))).any()
    if policy != "pyramidkv":
        assert (~prev.after).sum(axis=2).min() == (~prev.after).sum(axis=2).max()


@pytest.mark.parametrize("unified", [False, True], ids=["streams", "unified"])
def test_token_policy_per_sequence(llama, tmp_path, unified):
    """Four sequences decoded together (one stream each, or one shared stream with -kvu): every sequence gets
    its own passes at its own positions, its own budget and its own reference selection; H2O scores count
    only the sequence's own queries (the KQ mask keeps other sequences' cells at zero weight)."""
    folder = tmp_path / "dump"
    env = {"ELASTICKV": "1", "ELASTICKV_POLICY": "h2o", "ELASTICKV_BUDGET": "0.5", "ELASTICKV_SINK": str(SINK),
           "ELASTICKV_FREE": "0", "ELASTICKV_DUMP": str(folder)}
    # -c 256 -b 1024: llama-perplexity decodes 4 chunks at once, one sequence each
    r = llama.tool("llama-perplexity", ["-c", "256", "-b", "1024", "-ub", "64", "--chunks", "4", "-t", "2", "-lv", "4",
                                        "-fa", "off", "-f", paths.relative(paths.WIKITEXT_TEST)]
                   + (["-kvu"] if unified else []), env=env)
    assert r.rc == 0, r.log[-3000:]
    assert "n_seq=4" in r.log
    G = n_query_heads_per_kv_head(r.log)
    P = policies.policy("h2o")
    b = budget_from_env(env)
    found = dump.token_passes(folder)
    assert {seq for _, _, seq in found} == {0, 1, 2, 3}
    prev = {}
    for ctx, pass_id, seq in found:
        t = dump.load_token(folder, ctx, pass_id, seq)
        # each sequence's passes at its positions 127, 191, 255
        assert len(t.pos) == (len(prev[seq].pos) + 64 if seq in prev else 128)
        check_token_pass(P, b, folder, (ctx, pass_id, seq), t, prev.get(seq))
        np.testing.assert_allclose(t.score.astype(np.float64).sum(axis=2), G * len(t.pos), rtol=2e-4)
        prev[seq] = t
    assert sorted(len(p.pos) for p in prev.values()) == [256] * 4  # each sequence reached its last pass


def n_query_heads_per_kv_head(log: str) -> int:
    n_head = int(re.search(r"n_head\s*=\s*(\d+)", log).group(1))
    n_head_kv = int(re.search(r"n_head_kv\s*=\s*(\d+)", log).group(1))
    return n_head // n_head_kv


def test_h2o_eviction_is_exact_and_scores_are_attention(llama, tmp_path):
    r, folder, _ = run_dumped(llama, tmp_path, "h2o", {"ELASTICKV_BUDGET": "0.3"})
    G = n_query_heads_per_kv_head(r.log)
    assert G > 1  # SmolLM2-135M: 9 query heads over 3 KV heads, so the grouping matters
    prev = None
    for key in dump.token_passes(folder):
        t = dump.load_token(folder, *key)
        n = len(t.pos)
        # every query (positions 0..pos_max, each once) gives one unit of attention per query head
        totals = t.score.astype(np.float64).sum(axis=2)
        np.testing.assert_allclose(totals, G * n, rtol=2e-4)
        if prev is not None:
            m = prev.score.shape[2]
            gone = prev.after  # evicted at the previous pass: no attention since
            assert np.array_equal(t.score[:, :, :m][gone], prev.score[gone])
            kept = ~gone
            assert (t.score[:, :, :m][kept] > prev.score[kept]).mean() > 0.9  # live cells keep receiving
        prev = t


def test_lru_refreshes_recency_and_fifo_is_streaming(llama, tmp_path):
    """lru_fifo (the notebook's LRU as coded) keeps exactly StreamingLLM's cells at every pass; lru (as meant)
    refreshes the recency of used cells (an old cell used since the last pass is more recent than cells that
    arrived after it) and so keeps a different set."""
    runs = {}
    for policy in ("streaming", "lru_fifo", "lru"):
        _, folder, _ = run_dumped(llama, tmp_path / policy, policy, {"ELASTICKV_BUDGET": "0.4"})
        runs[policy] = [dump.load_token(folder, *key) for key in dump.token_passes(folder)]
    assert len(runs["lru"]) == len(runs["streaming"]) == 7
    for a, b in zip(runs["streaming"], runs["lru_fifo"]):
        assert np.array_equal(a.after, b.after)
    last = runs["lru"][-1]
    arrival = runs["lru_fifo"][-1].recency  # the recency of a cell that is never used: its arrival
    refreshed = last.recency > arrival
    assert refreshed.any() and (refreshed[:, :, :128].sum() > 0)  # cells of the first ubatches were used later
    assert any(not np.array_equal(a.after, b.after) for a, b in zip(runs["lru"], runs["lru_fifo"]))


@pytest.mark.parametrize("policy", ["h2o", "scissorhands", "lru"])
def test_scores_equal_attention_recomputed_from_queries_and_keys(llama, tmp_path, policy):
    """The scores the hook accumulated in the graph, at every pass and in every layer, equal the scores the numpy
    definition (policies.common.scores_of_queries) computes from the dumped queries and keys: for each ubatch
    since the cell was written (H2O) or since the last pass (ScissorHands), its queries against the keys at
    positions up to their own, with the cells evicted by the earlier passes out of the softmax.

    The queries are rounded to f16 as the KQ product of an f16 cache reads them (ggml multiplies an f16 K by Q
    converted to f16); the rest is float64 here and float32 in the graph, so the sums agree to 1e-3 of one
    query's attention (measured: 4e-5 at most). A count may differ only where a recomputed probability lies
    within 0.1 % of the 1/n_kv threshold."""
    r, folder, _ = run_dumped(llama, tmp_path, policy, {"ELASTICKV_BUDGET": "0.4"})
    P = policies.policy(policy)
    ubatches = [dump.load_ubatch(folder, *key) for key in dump.ubatches(folder)]
    assert [u.manifest["passes_before"] for u in ubatches] == [0, 0, 1, 2, 3, 4, 5, 6]  # 8 ubatches of 64
    found = dump.token_passes(folder)
    tps = [dump.load_token(folder, *key) for key in found]
    assert all(u.manifest["n_stream"] == 1 and set(u.manifest["seq"]) == {0} for u in ubatches)
    layers = ubatches[0].manifest["layers"]
    assert len(layers) == 30
    n_checked = 0
    for li, layer in enumerate(layers):
        for p, (key, t) in enumerate(zip(found, tps)):
            k = dump.token_keys(folder, *key, layer)
            want = np.zeros(t.score.shape[1:])
            lo, hi = want.copy(), want.copy()
            for u in ubatches:
                before = u.manifest["passes_before"]
                if before > p or (P.reset_score and before != p):
                    continue  # after this pass, or (ScissorHands) before the last reset
                evicted = np.zeros(want.shape, dtype=bool)  # as the bias stood during the ubatch
                if before > 0:
                    prev = tps[before - 1].after[li]
                    evicted[:, :prev.shape[1]] = prev
                q = u.q(layer)[0].astype(np.float16)
                args = (q, u.pos, k, t.pos, evicted, u.manifest["kq_scale"], u.manifest["n_kv"])
                want += common.scores_of_queries(P.score, *args)
                if P.score == "count":
                    lo += common.scores_of_queries(P.score, *args, rel_margin=1e-3)
                    hi += common.scores_of_queries(P.score, *args, rel_margin=-1e-3)
            got = t.score[li].astype(np.float64)
            if P.score == "attn":
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3, err_msg=f"layer {layer} pass {p}")
            else:
                assert np.all((lo <= got) & (got <= hi)), (layer, p, np.abs(got - want).max())
                assert (hi - lo).sum() <= 0.01 * want.sum()  # few probabilities lie that close to the threshold
            n_checked += 1
    assert n_checked == 30 * 7


def test_scissorhands_scores_are_counts_over_the_window(llama, tmp_path):
    r, folder, _ = run_dumped(llama, tmp_path, "scissorhands", {"ELASTICKV_BUDGET": "0.5"})
    G = n_query_heads_per_kv_head(r.log)
    for key in dump.token_passes(folder)[1:]:  # the first pass sums the warm-up (128 queries)
        t = dump.load_token(folder, *key)
        assert np.array_equal(t.score, np.round(t.score)), "counts are whole numbers"
        # reset after every pass: at most G x 64 queries of the window counted a cell
        assert 0 < t.score.max() <= G * 64
        assert t.score[t.before].max() == 0, "evicted cells are never above uniform"


@pytest.mark.parametrize("policy, budget", [("random_entries", "0.6"), ("topk_entries", "0.5")])
def test_element_policy_equals_reference(llama, tmp_path, policy, budget):
    r, folder, env = run_dumped(llama, tmp_path, policy, {"ELASTICKV_BUDGET": budget})
    b = budget_from_env(env)
    found = dump.passes(folder)
    assert len(found) == 7
    zeroed = 0
    prev_pos_max = -1
    for ctx, pass_id in found:
        p = dump.load(folder, ctx, pass_id)
        assert p.manifest["policy"] == policy
        assert (p.manifest["fraction"], p.manifest["seed"]) == (b.fraction, b.seed), "the hook misread a variable"
        pos_max = p.manifest["seqs"][0]["pos_max"]
        assert dump.coverage_problems(folder, p) == []  # exactly the cache's own cells, positions 0..pos_max
        for kind_i, kind in enumerate(("k", "v")):
            cells = p.cells[kind]
            # each cell once: the cells written since the last pass, outside the sinks (chosen by position here)
            proc = (cells[:, 3] & (1 << 16)) != 0  # GGML_KV_SPARSIFY_PROCESS
            assert np.array_equal(proc, (cells[:, 2] >= SINK) & (cells[:, 2] > prev_pos_max))
            for li, layer in enumerate(p.layers):
                before = p.values(layer, kind, "before")
                after = p.values(layer, kind, "after")
                want = before.copy()
                if proc.any():
                    if policy == "random_entries":
                        want[proc] = policies.random_entries.apply(b, before[proc], cells[proc, 2], li, kind_i)
                    else:
                        want[proc] = policies.topk_entries.apply(b, before[proc])
                np.testing.assert_array_equal(after, want, err_msg=f"pass {pass_id} layer {layer} {kind}")
                zeroed += int((after == 0).sum() - (before == 0).sum())
        prev_pos_max = pos_max
    assert zeroed > 0


ALL = list(policies.TOKEN_POLICIES + policies.ELEMENT_POLICIES)


def test_budget_100_is_bit_identical_to_hook_off(llama, tmp_path):
    def logits(name, env):
        path = tmp_path / f"{name}.kld"
        r = llama.perplexity(["-fa", "off", "--kl-divergence-base", str(path)], env=env)
        assert r.rc == 0, r.log[-3000:]
        return path, r

    off, _ = logits("off", {"ELASTICKV": "0"})
    for policy in ALL:
        env = {"ELASTICKV": "1", "ELASTICKV_POLICY": policy, "ELASTICKV_BUDGET": "1.0", "ELASTICKV_VERBOSE": "1"}
        if policy == "learned":
            env["ELASTICKV_LEARNED_WEIGHTS"] = str(random_weights(tmp_path / "mlp.bin"))
        path, r = logits(policy, env)
        # the hook ran passes with this policy: "(streaming, head scope)" for token policies, "(topk_entries)"
        assert re.search(rf"elastickv: pass \d+ seq \d+ pos_max \d+ \({policy}[,)]", r.log), r.log[-2000:]
        assert filecmp.cmp(off, path, shallow=False), f"{policy} at 100 % changed the logits"


def test_a_small_budget_changes_the_logits(llama, tmp_path):
    base = tmp_path / "base.kld"
    assert llama.perplexity(["-fa", "off", "--kl-divergence-base", str(base)]).rc == 0
    r = llama.perplexity(["-fa", "off", "--kl-divergence-base", str(base), "--kl-divergence"],
                         env={"ELASTICKV": "1", "ELASTICKV_POLICY": "streaming", "ELASTICKV_BUDGET": "0.25"})
    assert r.rc == 0, r.log[-2000:]
    assert "KL divergence" in r.log or "KLD" in r.log
    from elastickv import logparse
    assert logparse.kld_stats(r.log).kld[0] > 0.01


# under flash attention a token policy runs only when its evictions free cells (the KQ mask hides a freed cell;
# flash attention takes no per-head bias): streaming, random_tokens, sliding_window and lru_fifo by default,
# h2o/scissorhands/lru with
# ELASTICKV_SCOPE=shared; per-head scopes, pyramidkv and ELASTICKV_FREE=0 are refused at context creation
FA_CASES = [(p, {}, p in ("streaming", "random_tokens", "sliding_window", "lru_fifo")) for p in policies.TOKEN_POLICIES] + [
    ("h2o", {"ELASTICKV_SCOPE": "shared"}, True),
    ("scissorhands", {"ELASTICKV_SCOPE": "shared"}, True),
    ("lru", {"ELASTICKV_SCOPE": "shared"}, True),
    ("streaming", {"ELASTICKV_FREE": "0"}, False),
    ("random_tokens", {"ELASTICKV_FREE": "0"}, False),
]


@pytest.mark.parametrize("policy, extra, runs", FA_CASES,
                         ids=[f"{p}-{'-'.join(f'{k[10:].lower()}{v}' for k, v in e.items()) or 'default'}"
                              for p, e, _ in FA_CASES])
def test_token_policies_under_flash_attention(llama, tmp_path, policy, extra, runs):
    env = {"ELASTICKV": "1", "ELASTICKV_POLICY": policy, "ELASTICKV_BUDGET": "0.5", "ELASTICKV_VERBOSE": "1"} | extra
    if policy == "learned":
        env["ELASTICKV_LEARNED_WEIGHTS"] = str(random_weights(tmp_path / "mlp.bin"))
    r = llama.perplexity(["-fa", "on"], env=env, chunks=1)
    if runs:
        assert r.rc == 0, r.log[-2000:]
        assert re.search(rf"\({policy}, (head|shared) scope\): .* freed [1-9]\d* cells", r.log), r.log[-2000:]
    else:
        assert r.rc != 0
        assert (f"ELASTICKV_POLICY={policy} with" in r.log and "hides cells per layer and KV head with an attention "
                "bias, which flash attention cannot take; run with -fa off" in r.log), r.log[-2000:]


def test_learned_weights_must_fit(llama, tmp_path):
    """A missing, damaged or mis-shaped weights file is one clear error naming the variable."""
    bad = {"missing": tmp_path / "none.bin", "garbage": tmp_path / "garbage.bin", "short": tmp_path / "short.bin",
           "head dim 32": random_weights(tmp_path / "hd32.bin", dims=(32, 16, 1))}
    bad["garbage"].write_bytes(b"not a network")
    bad["short"].write_bytes(random_weights(tmp_path / "full.bin").read_bytes()[:-4])
    for why, path in bad.items():
        r = llama.perplexity(["-fa", "off"], env={"ELASTICKV": "1", "ELASTICKV_POLICY": "learned", "ELASTICKV_BUDGET": "0.5",
                                                  "ELASTICKV_LEARNED_WEIGHTS": str(path)}, chunks=1)
        assert r.rc != 0, why
        assert f"ELASTICKV_LEARNED_WEIGHTS={str(path)!r}" in r.log or f"ELASTICKV_LEARNED_WEIGHTS='{path}'" in r.log \
            or f"ELASTICKV_LEARNED_WEIGHTS={path}" in r.log, (why, r.log[-1500:])
    r = llama.perplexity(["-fa", "off"], env={"ELASTICKV": "1", "ELASTICKV_POLICY": "learned", "ELASTICKV_BUDGET": "0.5"},
                         chunks=1)
    assert r.rc != 0 and "ELASTICKV_POLICY=learned needs ELASTICKV_LEARNED_WEIGHTS" in r.log


# --------------------------------------------------------------------------------- numpy definitions

def test_parse_budget():
    assert common.parse_budget("0.5") == common.Budget(fraction=0.5)
    assert common.parse_budget("25%") == common.Budget(fraction=0.25)
    assert common.parse_budget("1.0").fraction == 1.0
    assert common.parse_budget("2048") == common.Budget(cells=2048)
    for bad in ("0", "1.5", "0%", "150%", "-3", "abc"):
        with pytest.raises(ValueError):
            common.parse_budget(bad)


def test_budget_cells():
    assert common.budget_cells(common.Budget(fraction=0.67), 4096) == math.ceil(0.67 * 4096)
    assert common.budget_cells(common.Budget(cells=100), 50) == 50
    assert common.budget_cells(common.Budget(cells=100), 500) == 100


def test_hash_is_splitmix64():
    # splitmix64 seeded with 0 returns 0xE220A8397B1DCDAF first: mix(0) is that output
    assert int(common.hash64(0)) == 0xE220A8397B1DCDAF
    a = common.hash64(42, np.arange(5))
    assert a.dtype == np.uint64 and len(set(a.tolist())) == 5
    assert int(common.hash64(42, 3)) == int(a[3])


def test_pyramid_budgets_decrease_and_average_to_the_budget():
    b = common.Budget(fraction=0.25, beta=20)
    for n, L in ((4096, 30), (1000, 24)):
        B = common.budget_cells(b, n)
        per = [policies.pyramidkv.layer_budget(b, B, n, layer, L) for layer in range(L)]
        assert per == sorted(per, reverse=True) and per[0] > per[-1]
        assert abs(np.mean(per) - B) <= 1
        assert per[-1] == math.floor(B / 20 + 0.5)
    # a large budget: the slope flattens so that no layer exceeds the sequence, the mean stays B
    b = common.Budget(fraction=0.9)
    per = [policies.pyramidkv.layer_budget(b, 3687, 4096, layer, 30) for layer in range(30)]
    assert max(per) <= 4096 and abs(np.mean(per) - 3687) <= 1


def test_select_by_hand():
    pos = np.arange(20)
    score = np.zeros(20, dtype=np.float32)
    score[[5, 9, 12]] = [3.0, 2.0, 1.0]
    b = common.Budget(cells=10, heavy_ratio=0.8)
    # B = 10, sinks 2 -> avail 8, recent R = floor(0.2*8 + 0.5) = 2 (pos 18, 19), heavy 6 among pos 2..17
    out = common.select(policies.h2o.POLICY, b, 2, 10, pos, score, np.zeros(20, bool))
    kept = set(np.flatnonzero(~out).tolist())
    # 5, 9, 12 by score, then the zero-score ties go to the higher positions: 17, 16, 15
    assert kept == {0, 1, 18, 19, 5, 9, 12, 17, 16, 15}
    # evicted cells stay evicted even when their score is the highest
    ev = np.zeros(20, bool)
    ev[5] = True
    out2 = common.select(policies.h2o.POLICY, b, 2, 10, pos, score, ev)
    assert out2[5] and (~out2).sum() == 10
    # streaming keeps the most recent whatever the scores
    out3 = common.select(policies.streaming.POLICY, b, 2, 10, pos, score, np.zeros(20, bool))
    assert set(np.flatnonzero(~out3).tolist()) == {0, 1, *range(12, 20)}


def test_topk_entries_reference():
    x = np.array([[[0.1, -3.0, 2.0, 0.5, -2.0, 0.0]]], dtype=np.float32)
    out = policies.topk_entries.apply(common.Budget(fraction=0.5), x)
    assert out.tolist() == [[[0.0, -3.0, 2.0, 0.0, -2.0, 0.0]]]
    # ties: the lower index is kept first
    y = np.array([[[1.0, -1.0, 1.0, 0.5]]], dtype=np.float32)
    assert policies.topk_entries.apply(common.Budget(fraction=0.5), y).tolist() == [[[1.0, -1.0, 0.0, 0.0]]]


def test_random_entries_reference_hits_the_target_fraction():
    rows = np.ones((400, 3, 64), dtype=np.float32)
    out = policies.random_entries.apply(common.Budget(fraction=0.3, seed=1), rows, np.arange(400), 0, 0)
    assert abs((out != 0).mean() - 0.3) < 0.01
    again = policies.random_entries.apply(common.Budget(fraction=0.3, seed=1), rows, np.arange(400), 0, 0)
    other = policies.random_entries.apply(common.Budget(fraction=0.3, seed=2), rows, np.arange(400), 0, 0)
    assert np.array_equal(out, again) and not np.array_equal(out, other)


def test_element_policies_refuse_quantized_caches(llama):
    r = llama.perplexity(["-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"],
                         env={"ELASTICKV": "1", "ELASTICKV_POLICY": "topk_entries", "ELASTICKV_BUDGET": "0.5"}, chunks=1)
    assert r.rc != 0
    assert "ELASTICKV_POLICY=topk_entries rewrites K/V entries on the host and supports f16 and f32 caches" in r.log
