# SPDX-License-Identifier: Apache-2.0
"""The compiled CPU op (GGML_OP_KV_SPARSIFY) against its numpy reference (scripts/elastickv/reference.py).

Random caches of every supported type, both V layouts, both modes, with sink cells, empty cells (absent from
the list or skipped with code -1) and several sequences (groups) in one buffer. The zero pattern must be
identical; for f32/f16/bf16 and the quantized codes the bytes after the pass must be identical.
To add a case, add a row to CASES (easy to hard).
"""

from __future__ import annotations

import numpy as np
import pytest

from elastickv import reference as ref

# type, n_head, head_dim, n_cells, n_group, trans
CASES = [
    ("f32", 1, 32, 40, 1, False),
    ("f16", 3, 64, 300, 1, False),
    ("bf16", 3, 64, 300, 1, False),
    ("q8_0", 3, 64, 300, 1, False),
    ("q4_0", 3, 64, 300, 1, False),
    ("q5_0", 3, 64, 300, 1, False),
    ("f16", 3, 64, 300, 1, True),
    ("f32", 2, 64, 129, 1, True),
    ("bf16", 2, 64, 129, 1, True),
    ("f16", 2, 128, 257, 4, False),
    ("q8_0", 2, 128, 257, 4, False),
    ("q4_0", 4, 64, 200, 3, False),
    ("q5_0", 2, 128, 257, 4, False),
    ("f16", 4, 80, 129, 3, True),  # head dim not a multiple of 32: the tail block is not histogrammed
    ("f32", 4, 80, 129, 3, False),
]


def random_cache(rng: np.random.Generator, type_name: str, n_rows: int, n_values: int) -> np.ndarray:
    """Raw bytes [n_rows, row_bytes] of a random cache with some exact zeros (and -0.0 for floats)."""
    if type_name in ref.FLOAT_BYTES:
        x = rng.laplace(size=(n_rows, n_values)).astype(np.float32)
        x[rng.random(x.shape) < 0.02] = 0.0
        x[rng.random(x.shape) < 0.01] = -0.0
        if type_name == "f32":
            return x.view(np.uint8).reshape(n_rows, -1)
        if type_name == "f16":
            return x.astype(np.float16).view(np.uint8).reshape(n_rows, -1)
        return (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n_rows, -1)
    nb = n_values // ref.BLOCK
    size = ref.QBLOCK_BYTES[type_name]
    raw = rng.integers(0, 256, size=(n_rows, nb, size), dtype=np.uint8)
    d = (rng.random((n_rows, nb)) * 0.2 + 0.01).astype(np.float16)
    d[rng.random(d.shape) < 0.05] *= -1
    raw[:, :, 0:2] = d.view(np.uint8).reshape(n_rows, nb, 2)
    return raw.reshape(n_rows, -1)


def random_cells(rng: np.random.Generator, n_cells: int, n_group: int, ordered: bool = False) -> np.ndarray:
    """A shuffled list over ~85% of the cells (the rest are "empty"): sinks observed only, a few skipped.
    ordered: the hook's order instead (cells ascending, ~97% present), so that the list holds runs of consecutive
    cells, some longer than the kernels' whole-line SIMD runs (32 cells)."""
    if ordered:
        present = np.flatnonzero(rng.random(n_cells) >= 0.03)
    else:
        present = rng.permutation(n_cells)[: int(n_cells * 0.85)]
    codes = []
    for i, c in enumerate(present):
        g = int(rng.integers(n_group))
        kind = rng.random()
        if kind < 0.05:
            code = -1
        elif kind < 0.20:
            code = g | ref.OBSERVE  # a sink: counted, never thresholded
        else:
            code = g | ref.PROCESS | ref.OBSERVE | ref.HIST
        codes.append((c, code))
    return np.array(codes, dtype=np.int32)


def make_inputs(seed: int, type_name: str, n_head: int, head_dim: int, n_cells: int, n_group: int, trans: bool,
                ordered: bool = False):
    rng = np.random.default_rng(seed)
    n_embd = n_head * head_dim
    if trans:
        raw = random_cache(rng, type_name, n_embd, n_cells)
        n_values = n_cells
    else:
        raw = random_cache(rng, type_name, n_cells, n_embd)
        n_values = n_embd
    cells = random_cells(rng, n_cells, n_group, ordered)
    state = np.zeros((n_group, n_head, ref.NSTATE))
    state[:, :, ref.S] = rng.random((n_group, n_head)) * 500
    state[:, :, ref.N] = 1000.0
    return raw, n_values, cells, state


def assert_same_pass(got_raw, got_state, want, type_name, trans, n_head):
    # identical zero pattern
    zero_got = ref.decode(got_raw, type_name) == 0
    zero_want = ref.decode(want.raw, type_name) == 0
    assert np.array_equal(zero_got, zero_want), f"{(zero_got != zero_want).sum()} entries differ in zero pattern"
    # identical bytes (values of f32/f16/bf16, codes of quantized types)
    assert np.array_equal(got_raw, want.raw)
    # identical statistics
    np.testing.assert_allclose(got_state[..., ref.TAU], want.state[..., ref.TAU], rtol=1e-12, atol=0)
    np.testing.assert_allclose(got_state[..., ref.S], want.state[..., ref.S], rtol=1e-12, atol=0)
    for field in (ref.N, ref.N_PROC, ref.NNZ_PROC, ref.N_OBS, ref.NNZ_OBS, ref.N_PASS):
        assert np.array_equal(got_state[..., field], want.state[..., field]), field
    assert np.array_equal(got_state[..., ref.HIST0:], want.state[..., ref.HIST0:])


@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_cpu_op_equals_reference(ggml_cpu, case, incremental):
    type_name, n_head, head_dim, n_cells, n_group, trans = case
    raw, n_values, cells, state = make_inputs(7, *case)
    want = ref.kv_sparsify(raw, type_name, cells, state, 0.45, trans=trans, incremental=incremental)
    got_raw, got_state = ggml_cpu.kv_sparsify(raw, type_name, n_values, cells, state, 0.45, trans, incremental)
    assert_same_pass(got_raw, got_state, want, type_name, trans, n_head)
    # the pass did something, and only where allowed
    changed = ref.decode(raw, type_name) != ref.decode(got_raw, type_name)
    assert changed.any()
    proc_cells = cells[(cells[:, 1] >= 0) & ((cells[:, 1] & ref.PROCESS) != 0), 0]
    other = np.setdiff1d(np.arange(n_cells), proc_cells)
    changed_cells = changed.T if trans else changed
    assert not changed_cells[other].any(), "a sink, skipped or empty cell was modified"


ORDERED_CASES = [(t, 2, hd, 300, 2, trans) for t in ("f16", "bf16", "f32") for hd in (64, 80) for trans in (False, True)]
ORDERED_CASES += [(t, 2, 64, 300, 2, False) for t in ("q8_0", "q4_0")]


@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
@pytest.mark.parametrize("case", ORDERED_CASES, ids=lambda c: "-".join(map(str, c)))
def test_cpu_op_equals_reference_on_ordered_lists(ggml_cpu, case, incremental):
    """Lists in cell order, as the hook builds them: runs of consecutive cells (the transposed layout's kernels
    read whole lines of 32 cells through all rows) broken by empty, skipped and sink cells."""
    type_name, n_head, head_dim, n_cells, n_group, trans = case
    raw, n_values, cells, state = make_inputs(13, *case, ordered=True)
    run = np.diff(cells[cells[:, 1] >= 0, 0]) == 1
    assert np.convolve(run, np.ones(32, int), "valid").max() == 32, "the case must hold a run of 33+ cells"
    want = ref.kv_sparsify(raw, type_name, cells, state, 0.45, trans=trans, incremental=incremental)
    got_raw, got_state = ggml_cpu.kv_sparsify(raw, type_name, n_values, cells, state, 0.45, trans, incremental)
    assert_same_pass(got_raw, got_state, want, type_name, trans, n_head)
    assert (ref.decode(raw, type_name) != ref.decode(got_raw, type_name)).any()


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_cpu_op_independent_of_threads(ggml_cpu, n_threads):
    case = ("f16", 3, 64, 300, 2, False)
    raw, n_values, cells, state = make_inputs(11, *case)
    want = ref.kv_sparsify(raw, "f16", cells, state, 0.5)
    got_raw, got_state = ggml_cpu.kv_sparsify(raw, "f16", n_values, cells, state, 0.5, n_threads=n_threads)
    assert_same_pass(got_raw, got_state, want, "f16", False, 3)


def test_zero_codes_are_exact(ggml_cpu):
    """Zeroed quantized entries decode to exactly 0 and the rest of their block is unchanged."""
    for type_name in ("q8_0", "q4_0", "q5_0"):
        raw, n_values, cells, state = make_inputs(3, type_name, 2, 64, 50, 1, False)
        got_raw, _ = ggml_cpu.kv_sparsify(raw, type_name, n_values, cells, state, 0.8)
        before, after = ref.decode(raw, type_name), ref.decode(got_raw, type_name)
        changed = before != after
        assert changed.any()
        assert np.all(after[changed] == 0.0)
        assert np.array_equal(raw[:, :2], got_raw[:, :2])  # the first block's scale d is untouched


def test_scale_zero_is_a_no_op(ggml_cpu):
    raw, n_values, cells, state = make_inputs(5, "f16", 3, 64, 100, 1, False)
    got_raw, got_state = ggml_cpu.kv_sparsify(raw, "f16", n_values, cells, state, 0.0)
    assert np.array_equal(got_raw, raw)


def test_reference_refuses_types_without_exact_zero():
    with pytest.raises(ValueError, match="q4_1"):
        ref.kv_sparsify(np.zeros((1, 20), np.uint8), "q4_1", np.zeros((0, 2), np.int32), np.zeros((1, 1, ref.NSTATE)), 0.5)


# ------------------------------------------------------------------ edge values and determinism (issue 12)

def float_cache(x: np.ndarray, type_name: str) -> np.ndarray:
    """Raw bytes of float32 values stored as f32/f16/bf16 (bf16: truncated, as random_cache does)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if type_name == "f32":
        return x.view(np.uint8).reshape(x.shape[0], -1)
    if type_name == "f16":
        return x.astype(np.float16).view(np.uint8).reshape(x.shape[0], -1)
    return (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(x.shape[0], -1)


def all_processed(n_cells: int, n_group: int = 1) -> np.ndarray:
    return np.array([(c, (c % n_group) | ref.PROCESS | ref.OBSERVE | ref.HIST) for c in range(n_cells)], np.int32)


@pytest.mark.parametrize("trans", [False, True], ids=["rows", "trans"])
@pytest.mark.parametrize("type_name", ["f32", "f16", "bf16"])
def test_subnormals_are_thresholded_like_normal_values(ggml_cpu, type_name, trans):
    """Values around the type's smallest normal, subnormals included: the CPU zeroes exactly the reference's
    entries (no flush-to-zero anywhere in the op's path)."""
    rng = np.random.default_rng(21)
    tiny = {"f32": np.finfo(np.float32).tiny, "f16": float(np.finfo(np.float16).tiny),
            "bf16": np.finfo(np.float32).tiny}[type_name]
    n_cells, n_head, head_dim = 96, 2, 64
    x = (rng.laplace(size=(n_cells, n_head * head_dim)) * tiny).astype(np.float32)  # ~half of them subnormal
    raw = float_cache(x.T.copy() if trans else x, type_name)
    decoded = ref.decode(raw, type_name)
    assert ((decoded != 0) & (np.abs(decoded) < tiny)).mean() > 0.2, "the case must hold many subnormals"
    cells, state = all_processed(n_cells), np.zeros((1, n_head, ref.NSTATE))
    want = ref.kv_sparsify(raw, type_name, cells, state, 0.9, trans=trans)
    got_raw, got_state = ggml_cpu.kv_sparsify(raw, type_name, n_cells if trans else n_head * head_dim, cells, state,
                                              0.9, trans)
    assert_same_pass(got_raw, got_state, want, type_name, trans, n_head)
    assert (ref.decode(got_raw, type_name) != decoded).any()


@pytest.mark.parametrize("type_name", ["f32", "f16", "bf16", "q8_0", "q4_0", "q5_0"])
def test_a_value_equal_to_tau_survives(ggml_cpu, type_name):
    """Every |x| equal (scale 1, so tau = mean|x| = |x| exactly): nothing is below tau, nothing is zeroed."""
    n_cells, n_head, head_dim = 40, 2, 64
    if type_name in ref.FLOAT_BYTES:
        x = np.full((n_cells, n_head * head_dim), 0.375, np.float32)
        x[:, ::3] *= -1
        raw = float_cache(x, type_name)
    else:
        # every block: d = 0.25 and codes of one magnitude with both signs
        nb = n_head * head_dim // ref.BLOCK
        blocks = np.zeros((n_cells, nb, ref.QBLOCK_BYTES[type_name]), np.uint8)
        blocks[:, :, 0:2] = np.array([0.25], np.float16).view(np.uint8)
        if type_name == "q8_0":
            blocks[:, :, 2:] = np.array([3, -3] * 16, np.int8).view(np.uint8)  # x = +-0.75
        elif type_name == "q4_0":
            blocks[:, :, 2:] = 0x79  # nibbles 9 and 7: codes +1 and -1, x = +-0.25
        else:
            blocks[:, :, 2:6] = 0xFF  # q5_0: high bit 1 everywhere, nibble 9: code 25, x = 9 * 0.25
            blocks[:, :, 6:] = 0x99
        raw = blocks.reshape(n_cells, -1)
    values = ref.decode(raw, type_name)
    assert len(np.unique(np.abs(values))) == 1 and values[0, 0] != 0
    cells, state = all_processed(n_cells), np.zeros((1, n_head, ref.NSTATE))
    want = ref.kv_sparsify(raw, type_name, cells, state, 1.0)
    got_raw, got_state = ggml_cpu.kv_sparsify(raw, type_name, n_head * head_dim, cells, state, 1.0)
    assert_same_pass(got_raw, got_state, want, type_name, False, n_head)
    assert np.array_equal(got_raw, raw)
    np.testing.assert_array_equal(got_state[0, :, ref.TAU], np.abs(values[0, 0]))


@pytest.mark.parametrize("type_name", ["f32", "f16", "bf16"])
def test_nan_and_inf_in_the_cache(ggml_cpu, type_name):
    """A NaN makes its head's tau NaN: that head is left as it is; an Inf makes tau Inf: every finite value of
    its head is zeroed, the Inf stays. The CPU follows the reference in both."""
    rng = np.random.default_rng(5)
    n_cells, n_head, head_dim = 64, 2, 64
    x = rng.laplace(size=(n_cells, n_head * head_dim)).astype(np.float32)
    x[7, 3] = np.nan            # head 0
    x[9, head_dim + 5] = np.inf  # head 1
    raw = float_cache(x, type_name)
    cells, state = all_processed(n_cells), np.zeros((1, n_head, ref.NSTATE))
    want = ref.kv_sparsify(raw, type_name, cells, state, 0.5)
    got_raw, got_state = ggml_cpu.kv_sparsify(raw, type_name, n_head * head_dim, cells, state, 0.5)
    assert np.array_equal(got_raw, want.raw)
    np.testing.assert_array_equal(got_state, want.state)  # NaN where the reference has NaN
    after = ref.decode(got_raw, type_name)
    assert np.array_equal(after[:, :head_dim], ref.decode(raw, type_name)[:, :head_dim], equal_nan=True)
    assert np.isinf(after[9, head_dim + 5]) and (after[:, head_dim:][np.isfinite(after[:, head_dim:])] == 0).all()


@pytest.mark.parametrize("type_name, trans", [("f16", False), ("f16", True), ("q4_0", False), ("bf16", True)])
def test_same_bits_for_every_thread_count(ggml_cpu, type_name, trans):
    """Many list chunks (3000 cells: 12 chunks of 256, 3 groups, shuffled): the cache and the whole state are
    bit-identical for 1 to 8 threads (the sums are added in chunk order, whatever thread computed them). Up to 6
    threads a task is a whole chunk (every head of its cells), from 7 on (fewer than 2 chunks per thread) a (chunk,
    head) pair: both splits are compared."""
    case = (type_name, 3, 64, 3000, 3, trans)
    raw, n_values, cells, state = make_inputs(17, *case)
    runs = [ggml_cpu.kv_sparsify(raw, type_name, n_values, cells, state, 0.45, trans, n_threads=t)
            for t in (1, 2, 3, 5, 7, 8)]
    for got_raw, got_state in runs[1:]:
        assert np.array_equal(got_raw, runs[0][0])
        assert np.array_equal(got_state.view(np.uint64), runs[0][1].view(np.uint64))
    assert_same_pass(*runs[0], ref.kv_sparsify(raw, type_name, cells, state, 0.45, trans=trans), type_name, trans, 3)
