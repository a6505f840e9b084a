# SPDX-License-Identifier: Apache-2.0
"""The real-K/V analysis library (scripts/elastickv/kvanalysis.py) on hand-made arrays with known answers, and
every analysis script end to end on two layers of the real SmolLM2 dump (made by kvdump if missing)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from elastickv import kvanalysis as ka
from elastickv import kvdump, paths, results

PY = sys.executable
MODEL = "smollm2-135m"


# ---------------------------------------------------------------------------------------------------------
# attention metrics


def test_entropy_known_values():
    n = 37
    u = np.full((2, n), 1.0 / n)
    assert np.allclose(ka.entropy(u), math.log(n))
    assert np.allclose(ka.normalised_entropy(u, np.array([n, n])), 1.0)
    one_hot = np.zeros((1, n))
    one_hot[0, 5] = 1.0
    assert ka.entropy(one_hot)[0] == 0.0
    assert ka.entropy(np.array([[0.5, 0.5, 0.0]]))[0] == pytest.approx(math.log(2))


def test_topk_mass():
    p = np.array([[0.1, 0.4, 0.2, 0.3], [0.25, 0.25, 0.25, 0.25]])
    assert np.allclose(ka.topk_mass(p, 2), [0.7, 0.5])
    assert np.allclose(ka.topk_mass(p, 10), [1.0, 1.0])


def test_attention_is_causal_normalised_and_respects_keep():
    rng = np.random.default_rng(0)
    k = rng.normal(size=(10, 4))
    pos = np.arange(10)
    q_pos = np.array([3, 9])
    p = ka.attention(k[q_pos], q_pos, k, pos)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert np.all(p[0, 3:] == 0) and np.all(p[0, :3] > 0)  # strictly earlier keys only (self excluded)
    assert np.all(p[1, 9:] == 0)
    # hand computation of one row
    s = k[:3] @ k[3] / 2.0
    assert np.allclose(p[0, :3], np.exp(s) / np.exp(s).sum())
    keep = np.ones(10, dtype=bool)
    keep[[0, 5]] = False
    pk = ka.attention(k[q_pos], q_pos, k, pos, keep)
    assert np.all(pk[:, [0, 5]] == 0) and np.allclose(pk.sum(axis=1), 1.0)
    # a query at position 0 sees nothing: an all-zero row, not NaN
    assert np.all(ka.attention(k[:1], np.array([0]), k, pos) == 0)


def test_attend_outputs_and_visible_counts():
    k = np.eye(4)
    v = np.arange(16, dtype=np.float64).reshape(4, 4)
    p, o, nvis = ka.attend(k[[3]], np.array([3]), k, v, np.arange(4))
    assert nvis.tolist() == [3]
    assert np.allclose(p[0, :3], 1 / 3)  # q = e_3 is orthogonal to the three earlier keys: uniform
    assert np.allclose(o[0], v[:3].mean(axis=0))


def test_rel_error_energy_and_total_variation():
    x = np.array([3.0, 4.0])
    assert ka.rel_error(x, x) == 0.0
    assert ka.rel_error(np.zeros(2), x) == pytest.approx(1.0)
    assert ka.energy_removed(x, np.array([0.0, 4.0])) == pytest.approx(9 / 25)
    assert ka.energy_removed(x, x) == 0.0
    assert ka.total_variation(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == pytest.approx(1.0)
    assert ka.total_variation(np.array([[0.5, 0.5]]), np.array([[0.5, 0.5]])) == 0.0


# ---------------------------------------------------------------------------------------------------------
# ElasticKV and matched random zeroing


def small_cache(seed=0, n=40, heads=2, d=8):
    rng = np.random.default_rng(seed)
    x = rng.laplace(size=(n, heads, d)).astype(np.float32)
    pos = np.arange(n)
    return x, pos


def test_tau_and_ekv_mask_follow_the_rule():
    x, pos = small_cache()
    reg = ka.region(pos, 8)
    assert reg.sum() == 32 and not reg[:8].any()
    t = ka.tau(x, reg, 0.5)
    for h in range(2):
        assert t[h] == pytest.approx(0.5 * np.abs(x[8:, h]).astype(np.float64).mean(), rel=1e-7)
    m = ka.ekv_mask(x, reg, 0.5)
    assert not m[:8].any()  # sinks never zeroed
    expect = np.abs(x[8:]) < t[None, :, None]
    assert np.array_equal(m[8:], expect)
    assert not ka.ekv_mask(x, reg, 0.0).any()  # scale 0: untouched


def test_matched_random_mask_gives_exact_counts_in_the_region():
    x, pos = small_cache(1)
    x[10, 0, :3] = 0  # existing zeros are never picked
    reg = ka.region(pos, 8)
    counts = np.array([50, 7])
    m = ka.matched_random_mask(x, reg, counts, np.random.default_rng(3))
    assert m[:, 0].sum() == 50 and m[:, 1].sum() == 7
    assert not m[:8].any() and not m[10, 0, :3].any()
    assert np.array_equal(m, ka.matched_random_mask(x, reg, counts, np.random.default_rng(3)))  # seeded
    assert not np.array_equal(m, ka.matched_random_mask(x, reg, counts, np.random.default_rng(4)))
    z = ka.zero(x, m)
    assert (z == 0).sum() == (x == 0).sum() + 57
    with pytest.raises(ValueError, match="requested"):
        ka.matched_random_mask(x, reg, np.array([32 * 8 + 1, 0]), np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------------------
# row selectivity metrics


def test_selectivity_metrics_known_values():
    flat = np.ones((1, 8))
    one = np.zeros((1, 8))
    one[0, 2] = -5.0
    assert ka.gini(flat)[0] == pytest.approx(0.0)
    assert ka.gini(one)[0] == pytest.approx(7 / 8)
    assert ka.peak_to_mean(flat)[0] == pytest.approx(1.0)
    assert ka.peak_to_mean(one)[0] == pytest.approx(8.0)
    assert ka.kurtosis(np.array([[1.0, -1.0, 1.0, -1.0]]))[0] == pytest.approx(1.0)
    assert np.isnan(ka.kurtosis(flat)[0]) and np.isnan(ka.gini(np.zeros((1, 8)))[0])
    # top 10% of 20 entries = the 2 largest: energy (16 + 9) / (16 + 9 + 18 * 1)
    row = np.array([[4.0, -3.0] + [1.0] * 18])
    assert ka.top_energy_fraction(row, 0.1)[0] == pytest.approx(25 / 43)


def test_gini_matches_pairwise_definition_and_gaussian_kurtosis():
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(5, 16))
    a = np.abs(rows)
    brute = np.abs(a[:, :, None] - a[:, None, :]).sum(axis=(1, 2)) / (2 * 16 ** 2 * a.mean(axis=1))
    assert np.allclose(ka.gini(rows), brute)
    big = rng.normal(size=(1, 400_000))
    assert ka.kurtosis(big)[0] == pytest.approx(3.0, abs=0.05)


def test_block_survivors():
    row = np.ones((2, 64))
    row[0, :10] = 0
    row[1, 40:64] = 0
    assert ka.block_survivors(row, 32).tolist() == [[22, 32], [32, 8]]


# ---------------------------------------------------------------------------------------------------------
# tau bands


def test_band_sums_assign_each_entry_once():
    edges = [0, 0.25, 0.5, 1, 2, 4, math.inf]
    x = np.array([0.1, -0.3, 0.6, 1.0, -3.0, 5.0])  # one entry per band at tau = 1; |x| = tau is kept: [1, 2)
    s = ka.band_sums(x, 1.0, edges)
    assert s["entries"].tolist() == [1, 1, 1, 1, 1, 1]
    assert np.allclose(s["l1"], np.abs(x))
    assert np.allclose(s["l2"], x ** 2)
    fr = ka.band_fractions(ka.band_sums(np.random.default_rng(0).laplace(size=1000), 0.4, edges))
    for v in fr.values():
        assert v.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ka.band_sums(x, 1.0, [0.5, 1, 2])


# ---------------------------------------------------------------------------------------------------------
# statistics


def test_mean_se_and_damage_ratio():
    ms = ka.mean_se([1.0, 2.0, 3.0, 4.0])
    assert ms["mean"] == 2.5 and ms["se"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2) and ms["n"] == 4
    assert ka.mean_se([5.0])["se"] is None
    d = np.array([0.1, 0.3, 0.0])
    assert np.allclose(ka.damage_ratio(d, d), 1.0)  # identical methods: ratio 1 (also where both are 0)
    assert np.allclose(ka.damage_ratio([0.2, 0.9], [0.1, 0.3]), [2.0, 3.0])
    assert ka.geomean([2.0, 8.0]) == pytest.approx(4.0)


def test_bootstrap_ci_brackets_the_geomean():
    rng = np.random.default_rng(1)
    r = np.exp(rng.normal(np.log(30), 0.3, size=60))
    lo, hi = ka.bootstrap_geomean_ci(r, 2000, np.random.default_rng(2))
    assert lo < ka.geomean(r) < hi and hi / lo < 1.5
    lo, hi = ka.bootstrap_geomean_ci(np.full(10, 7.0), 200, np.random.default_rng(2))
    assert lo == pytest.approx(7.0) and hi == pytest.approx(7.0)


# ---------------------------------------------------------------------------------------------------------
# eviction replay


def planted_keys(n=120, d=16, heavy=50, seed=0):
    """Random keys, and token ``heavy`` aligned with every key so that all later queries attend to it."""
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(n, d)) * 0.3
    k[:, 0] = 1.0
    k[heavy, 0] = 12.0
    return k, np.arange(n)


@pytest.mark.parametrize("policy", ["h2o", "scissorhands"])
@pytest.mark.parametrize("stride", [1, 4])
def test_eviction_keeps_budget_sinks_recent_and_the_heavy_hitter(policy, stride):
    k, pos = planted_keys()
    budget, sink, recent = 40, 8, 10
    if policy == "h2o":
        keep = ka.h2o_keep(k, k, pos, budget, sink, recent, stride)
    else:
        keep = ka.scissorhands_keep(k, k, pos, budget, sink, recent, history=30, stride=stride)
    assert keep.sum() == budget
    assert keep[:sink].all() and keep[-recent:].all()
    assert keep[50]  # the planted heavy hitter survives (StreamingLLM drops it)
    assert not ka.recent_keep(pos, budget, sink)[50]


def test_recent_keep_and_budget_helpers():
    pos = np.arange(100)
    keep = ka.recent_keep(pos, 30, 8)
    assert keep.sum() == 30 and keep[:8].all() and keep[-22:].all() and not keep[8:78].any()
    assert ka.eviction_budget(2048, 0.654, 64) == round(0.654 * 2048)
    assert ka.eviction_budget(100, 0.01, 8) == 8
    assert ka.split_budget(1339, 64, 0.2) == (1020, 255)
    k, pos = planted_keys()
    with pytest.raises(ValueError, match="recent window"):
        ka.h2o_keep(k, k, pos, 10, 8, 5)  # the budget cannot hold the sinks and the recent window


def test_jsonable_replaces_non_finite():
    assert ka.jsonable({"a": np.float64("nan"), "b": [np.int32(3), np.array([1.5, np.inf])]}) == \
        {"a": None, "b": [3, [1.5, None]]}


# ---------------------------------------------------------------------------------------------------------
# the scripts end to end on two layers of the real SmolLM2 dump


#: the dump's run record goes here, never to results/dumps (the archive the tests must leave untouched); it is
#: kept between sessions so that a dump in build/cache/dumps is reused with its record
RECORDS = paths.BUILD / "test-tmp" / "kvdump-records"


@pytest.fixture(scope="module")
def real_dump(model_path):
    folder, record = kvdump.ensure(MODEL, 2048, records=RECORDS)
    return folder, record


def run_script(name, tmp_path, *extra):
    out = tmp_path / f"{name}.json"
    cmd = [PY, f"scripts/analysis/{name}.py", "--set", f"models=[{MODEL}]", "--set", "layers=[0,1]",
           "--set", f"output={out}", "--dumps", str(RECORDS), *extra]
    r = subprocess.run(cmd, cwd=paths.ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    agg = json.loads(out.read_text())
    results.validate_aggregate(agg)
    assert agg["sources"] == [paths.relative(RECORDS / f"{MODEL}-c2048.json")]
    assert agg["config"]["layers"] == [0, 1] and agg["notes"]
    return agg["data"]["models"][MODEL], out, cmd


def test_attention_haze_script(real_dump, tmp_path):
    d, _, _ = run_script("simulate_attention_haze", tmp_path, "--set", "scales=[0.0,0.3,0.6]", "--set", "seeds=[0]")
    assert d["layers"] == [0, 1] and d["n_units"] == 6
    pts = {p["label"]: p for p in d["points"]}
    assert list(pts) == ["s0.00", "s0.30", "s0.60", "sweet"]
    for meth in ("elastickv", "random"):
        zero = pts["s0.00"][meth]
        assert zero["sparsity_k"]["mean"] == 0 and zero["out_rel_err"]["mean"] == 0
        assert zero["entropy"]["mean"] == pytest.approx(d["dense"]["entropy"]["mean"])
    for p in d["points"]:  # matched sparsity, exactly
        assert p["elastickv"]["sparsity_k"]["mean"] == p["random"]["sparsity_k"]["mean"]
        assert p["elastickv"]["sparsity_v"]["mean"] == p["random"]["sparsity_v"]["mean"]
    assert 0 < pts["s0.30"]["elastickv"]["sparsity_k"]["mean"] < pts["s0.60"]["elastickv"]["sparsity_k"]["mean"]
    assert 0.25 < pts["sweet"]["elastickv"]["sparsity_k_region"]["mean"] < 0.45
    # zeroing the small entries changes the attention output less than zeroing as many random ones
    assert pts["sweet"]["elastickv"]["out_rel_err"]["mean"] < pts["sweet"]["random"]["out_rel_err"]["mean"]


def test_random_vs_ekv_script_and_refusal(real_dump, tmp_path):
    d, out, cmd = run_script("random_vs_ekv", tmp_path, "--set", "seeds=[0,1]", "--set", "bootstrap.n=200")
    sweet = d["presets"]["sweet"]
    for dmg in ("energy_k", "energy_v", "attn_tv", "attn_out"):
        r = sweet["ratio"][dmg]
        assert r["n_units"] == 6 and len(r["per_seed_geomean"]) == 2
        assert r["ci_low"] <= r["geomean"] <= r["ci_high"]
        assert r["geomean"] > 1  # ElasticKV removes the small entries: less damage than random
    # energy removed by ElasticKV = the L2 share of |x| < tau: about 1 %, far below its ~33 % sparsity
    assert sweet["damage"]["energy_k"]["elastickv"]["mean"] < 0.05
    assert sweet["damage"]["energy_k"]["random"]["mean"] == pytest.approx(
        sweet["sparsity_region"]["k"]["mean"], abs=0.03)  # random zeroing removes energy ~ in proportion
    # another config may not overwrite the result without --force
    r = subprocess.run(cmd[:-2] + ["--set", "seeds=[5]"], cwd=paths.ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and "--force" in r.stderr
    assert json.loads(out.read_text())["config"]["seeds"] == [0, 1]


def test_selectivity_script(real_dump, tmp_path):
    d, _, _ = run_script("f2_spr_real_kv", tmp_path)
    assert d["hook_vs_reference_mismatches"] == {"k": 0, "v": 0}  # the hook's output is the reference rule
    for t in ("k", "v"):
        te = d["tensors"][t]
        assert te["before"]["zero_frac"]["mean"] == 0 and te["before"]["block_nnz"]["mean"] == 32
        assert te["before"]["block_nnz_hist"][32] == 1.0
        assert 0.25 < te["after"]["zero_frac"]["mean"] < 0.45
        assert te["after"]["zero_frac"]["mean"] == pytest.approx(te["random"]["zero_frac"]["mean"])
        assert te["after"]["block_nnz"]["mean"] == pytest.approx(32 * (1 - te["after"]["zero_frac"]["mean"]))
        assert sum(te["after"]["block_nnz_hist"]) == pytest.approx(1.0)
        assert te["after"]["gini"]["mean"] > te["before"]["gini"]["mean"]


def test_tau_band_script(real_dump, tmp_path):
    d, _, _ = run_script("tau_band_energy", tmp_path)
    for t in ("k", "v"):
        te = d["tensors"][t]
        for kind in ("entries", "l1", "l2"):
            assert sum(te["pooled"][kind]) == pytest.approx(1.0)
        z = te["zeroed"]
        assert 0.25 < z["entries"]["pooled"] < 0.45  # the region sparsity of the sweet preset
        assert z["l2"]["pooled"] < z["l1"]["pooled"] < z["entries"]["pooled"]


def test_eviction_replay_script(real_dump, tmp_path):
    d, _, _ = run_script("eviction_replay", tmp_path, "--set", "stride=8")
    m = d["methods"]
    assert set(m) == {"elastickv", "h2o", "scissorhands", "streamingllm"}
    for b in d["budgets"]:
        assert b["budget"] == round(b["kept_fraction"] * 2048)
    for name in ("h2o", "scissorhands", "streamingllm"):  # same stored values as ElasticKV, within a token
        assert m[name]["kept_values"]["mean"] == pytest.approx(m["elastickv"]["kept_values"]["mean"], abs=1 / 2048)
        assert m[name]["pooled_energy_k"] > 5 * m["elastickv"]["pooled_energy_k"]  # whole tokens go
    assert m["streamingllm"]["attn_out"]["mean"] > 0


def test_bad_layer_is_a_clear_error(real_dump, tmp_path):
    r = subprocess.run([PY, "scripts/analysis/tau_band_energy.py", "--set", f"models=[{MODEL}]", "--set",
                        "layers=[99]", "--set", f"output={tmp_path / 'x.json'}", "--dumps", str(RECORDS)], cwd=paths.ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "layers [99] are not in the dump" in r.stderr and "Traceback" not in r.stderr
