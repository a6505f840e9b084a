# SPDX-License-Identifier: Apache-2.0
"""The CUDA kernels' per-thread logic, run over the whole grid on the CPU (no GPU), against the CPU kernel and the
numpy reference.

tests/cuda/kv_sparsify_host.cu is built by nvcc from the patched tree's ggml-cuda/kv-sparsify-thread.cuh: every
function a thread of the stat, tau and apply kernels calls (indexing, block decode, magnitudes, thresholds, zero
codes, both layouts, both modes). The kernels add the cells' sums in the CPU kernel's order, so the definition
tested here is the strongest one: the cache bytes and the whole state (S, N, tau, counts, histogram) are
bit-identical to the CPU op's, for every type, layout, mode and head size. Not covered without a GPU: the warp
shuffles (their order is kvs_lanes_combine), shared memory and barriers, atomics, the launch and timing;
scripts/gpu/verify.sh runs the kernels themselves against the CPU (test-backend-ops) where a GPU is lent.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from elastickv import paths
from elastickv import reference as ref

sys.path.insert(0, str(paths.ROOT / "scripts" / "setup"))
sys.path.insert(0, str(paths.ROOT / "tests"))

from cuda_host import CudaHost  # noqa: E402
from test_op_reference import all_processed, assert_same_pass, float_cache, make_inputs  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None,
                                reason="nvcc (CUDA toolkit) is not installed on this machine")


@pytest.fixture(scope="module")
def cuda_host():
    import check_cuda_compile

    return CudaHost(check_cuda_compile.build_host_lib())


def assert_bit_identical(host, cpu):
    (h_raw, h_state), (c_raw, c_state) = host, cpu
    assert np.array_equal(h_raw, c_raw), f"{(h_raw != c_raw).sum()} cache bytes differ"
    diff = h_state.view(np.uint64) != c_state.view(np.uint64)
    assert not diff.any(), f"state differs at (group, head, field) {np.argwhere(diff)[:5].tolist()}"


# type, n_head, head_dim, n_cells, n_group, trans: every type and layout, head sizes 64, 80, 128, 256, several
# groups, lists over several 256-entry chunks with holes (skipped entries, sinks observed only, absent cells)
CASES = [
    ("f32", 2, 64, 300, 1, False),
    ("f16", 3, 64, 700, 2, False),
    ("bf16", 2, 128, 300, 1, False),
    ("q8_0", 2, 128, 600, 3, False),
    ("q4_0", 3, 64, 600, 2, False),
    ("q5_0", 2, 256, 300, 2, False),
    ("f16", 2, 256, 300, 1, False),
    ("f32", 4, 80, 300, 3, False),
    ("f16", 3, 64, 700, 2, True),
    ("f32", 2, 128, 300, 1, True),
    ("bf16", 2, 64, 520, 2, True),
    ("f16", 4, 80, 300, 3, True),
]


@pytest.mark.parametrize("incremental", [False, True], ids=["full", "incremental"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_grid_equals_cpu_bit_for_bit(ggml_cpu, cuda_host, case, incremental):
    type_name, n_head, head_dim, n_cells, n_group, trans = case
    raw, n_values, cells, state = make_inputs(31, *case)
    host = cuda_host.kv_sparsify(raw, type_name, n_values, cells, state, 0.45, trans, incremental)
    cpu = ggml_cpu.kv_sparsify(raw, type_name, n_values, cells, state, 0.45, trans, incremental)
    assert_bit_identical(host, cpu)
    assert_same_pass(*host, ref.kv_sparsify(raw, type_name, cells, state, 0.45, trans=trans, incremental=incremental),
                     type_name, trans, n_head)
    assert not np.array_equal(host[0], raw), "the pass zeroed nothing: the case tests nothing"


def test_incremental_passes_in_sequence(ggml_cpu, cuda_host):
    """Four incremental passes over a growing cache (S and N accumulate; counters reset every pass), each on its
    own list of new cells: host and CPU stay bit-identical after every pass."""
    raw, n_values, cells, state = make_inputs(41, "f16", 2, 64, 1200, 2, False)
    h_raw, h_state, c_raw, c_state = raw, state, raw, state
    for k, (lo, hi) in enumerate([(0, 700), (700, 900), (900, 964), (964, 1200)]):
        part = cells[(cells[:, 0] >= lo) & (cells[:, 0] < hi)]
        h_raw, h_state = cuda_host.kv_sparsify(h_raw, "f16", n_values, part, h_state, 0.5, False, True)
        c_raw, c_state = ggml_cpu.kv_sparsify(c_raw, "f16", n_values, part, c_state, 0.5, False, True)
        assert_bit_identical((h_raw, h_state), (c_raw, c_state))
    assert (h_state[..., ref.N] > state[..., ref.N]).all()


@pytest.mark.parametrize("type_name, trans", [("f16", False), ("q8_0", False), ("f32", True)])
def test_row_pitch_larger_than_a_row(cuda_host, type_name, trans):
    """A view whose rows are further apart than their bytes (a stream of a larger cache): the same pass, and the
    bytes between rows untouched (checked inside CudaHost)."""
    raw, n_values, cells, state = make_inputs(43, type_name, 2, 64, 300, 1, trans)
    dense = cuda_host.kv_sparsify(raw, type_name, n_values, cells, state, 0.45, trans)
    padded = cuda_host.kv_sparsify(raw, type_name, n_values, cells, state, 0.45, trans, pad=96)
    assert_bit_identical(padded, dense)


@pytest.mark.parametrize("trans", [False, True], ids=["rows", "trans"])
@pytest.mark.parametrize("type_name", ["f32", "f16", "bf16"])
def test_subnormals(ggml_cpu, cuda_host, type_name, trans):
    """Values around the smallest normal, half of them subnormal: the kernels read magnitudes from the stored bits,
    so -use_fast_math's flush-to-zero cannot drop them from the statistic or keep them from being zeroed."""
    rng = np.random.default_rng(23)
    tiny = {"f32": np.finfo(np.float32).tiny, "f16": float(np.finfo(np.float16).tiny),
            "bf16": np.finfo(np.float32).tiny}[type_name]
    n_cells, n_head, head_dim = 96, 2, 64
    x = (rng.laplace(size=(n_cells, n_head * head_dim)) * tiny).astype(np.float32)
    raw = float_cache(x.T.copy() if trans else x, type_name)
    n_values = n_cells if trans else n_head * head_dim
    cells, state = all_processed(n_cells), np.zeros((1, n_head, ref.NSTATE))
    host = cuda_host.kv_sparsify(raw, type_name, n_values, cells, state, 0.9, trans)
    assert_bit_identical(host, ggml_cpu.kv_sparsify(raw, type_name, n_values, cells, state, 0.9, trans))
    assert (host[1][..., ref.S] > 0).all()


@pytest.mark.parametrize("type_name", ["f32", "f16", "bf16", "q8_0", "q4_0", "q5_0"])
def test_ties_stored_zeros_nan_inf(ggml_cpu, cuda_host, type_name):
    """Exact ties at tau (scale 1 over equal magnitudes), stored zeros and -0.0, and (float types) a NaN in one head
    and an Inf in another: the host grid does what the CPU does, bit for bit."""
    rng = np.random.default_rng(29)
    n_cells, n_head, head_dim = 64, 3, 64
    if type_name in ref.FLOAT_BYTES:
        x = np.where(rng.random((n_cells, n_head * head_dim)) < 0.5, 0.375, -0.375).astype(np.float32)
        x[rng.random(x.shape) < 0.1] = 0.0
        x[rng.random(x.shape) < 0.05] = -0.0
        x[:, 2 * head_dim:] = rng.laplace(size=(n_cells, head_dim))
        x[3, 5] = np.nan
        x[4, head_dim + 1] = np.inf
        raw = float_cache(x, type_name)
    else:
        raw = make_inputs(29, type_name, n_head, head_dim, n_cells, 1, False)[0]
        nb = head_dim // ref.BLOCK
        blocks = raw.reshape(n_cells, n_head * nb, -1)
        blocks[:, :nb, 0:2] = np.array([0.25], np.float16).view(np.uint8)  # head 0: one d, codes of one magnitude
        blocks[:, :nb, 2:] = {"q8_0": 0xFD, "q4_0": 0x79, "q5_0": 0x99}[type_name]
        if type_name == "q5_0":
            blocks[:, :nb, 2:6] = 0xFF
    for scale in (1.0, 0.7):
        cells, state = all_processed(n_cells), np.zeros((1, n_head, ref.NSTATE))
        host = cuda_host.kv_sparsify(raw, type_name, n_head * head_dim, cells, state, scale)
        assert_bit_identical(host, ggml_cpu.kv_sparsify(raw, type_name, n_head * head_dim, cells, state, scale))


def test_large_cache(ggml_cpu, cuda_host):
    """16,384 cells of one stream, two sequences, a shuffled list over 64 chunks."""
    raw, n_values, cells, state = make_inputs(47, "f16", 2, 128, 16384, 2, False)
    assert_bit_identical(cuda_host.kv_sparsify(raw, "f16", n_values, cells, state, 0.45),
                         ggml_cpu.kv_sparsify(raw, "f16", n_values, cells, state, 0.45))


def _smallest_at_least(tau: float, type_name: str) -> int:
    """Bits of the smallest non-negative value of the type that is >= tau, by numpy rounding."""
    if not tau > 0:
        return 0
    t = np.float32(tau)
    if float(t) < tau:
        t = np.nextafter(t, np.float32(np.inf))
    b = int(np.array(t, np.float32).view(np.uint32))
    if type_name == "f32":
        return b
    if type_name == "bf16":
        return (b + 0xFFFF) >> 16
    h = np.float16(t)
    if float(h) < float(t):
        h = np.nextafter(h, np.float16(np.inf))
    return int(np.array(h, np.float16).view(np.uint16))


def test_tau_bits(cuda_host):
    """ggml_kv_sparsify_tau_bits (shared by the CPU and CUDA kernels, exact double arithmetic) against numpy's
    rounding: powers of two, values next to every type's representable values, subnormal ranges, overflow."""
    rng = np.random.default_rng(3)
    taus = [0.0, -1.0, float("nan"), float("inf"), 1e-300, 1e300, 65504.0, 65520.0, 3.4028234663852886e38,
            3.3895313892515355e38, 3.39e38, 2.0 ** -149, 2.0 ** -150, 2.0 ** -126, 2.0 ** -24, 2.0 ** -14, 2.0 ** -133]
    taus += list(np.exp(rng.uniform(np.log(1e-46), np.log(1e38), 3000)))
    for v in np.float32(rng.laplace(size=200)):
        f = float(abs(v))
        taus += [f, np.nextafter(f, 0.0), np.nextafter(f, 1.0)]
    for v in np.float16(rng.laplace(size=100)):
        f = float(abs(v))
        taus += [f, np.nextafter(f, 0.0), np.nextafter(f, 1.0)]
    with np.errstate(over="ignore"):
        for type_name in ("f32", "f16", "bf16"):
            got = [(t, cuda_host.tau_bits(t, type_name), _smallest_at_least(t, type_name)) for t in taus]
            bad = [g for g in got if g[1] != g[2]]
            assert not bad, f"{type_name}: (tau, got, want) {bad[:5]}"
    # the quantized types compare f32 bits
    assert cuda_host.tau_bits(0.3, "q4_0") == cuda_host.tau_bits(0.3, "f32")


# ------------------------------------------------------------------ test-backend-ops' cases, here without a GPU

INC = paths.ROOT / "cuda_hook" / "tree" / "tests" / "test-kv-sparsify.inc"
TYPES = {"KVS_ALL": ["f32", "f16", "bf16", "q8_0", "q4_0", "q5_0"], "KVS_FLOAT": ["f32", "f16", "bf16"]}


def backend_ops_cases() -> list[tuple]:
    """The lines of KV_SPARSIFY_CASES in test-kv-sparsify.inc, expanded over their types and both modes."""
    import re

    text = INC.read_text()
    body = text[text.index("KV_SPARSIFY_CASES[] = {"):]
    body = body[: body.index("};")]
    rows = re.findall(r"\{\s*(KVS_\w+),\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+),\s*(true|false),\s*(\d+),\s*(\d+),"
                      r"\s*(\d+),\s*(true|false),\s*([\d.]+)f\s*\}", body)
    assert len(rows) == body.count("{ KVS_"), "a line of KV_SPARSIFY_CASES does not parse"
    cases = []
    for types, *vals in rows:
        n_head, head_dim, n_cells, kv_size, n_group = map(int, vals[:5])
        trans, pad, stream, n_pass, special, scale = vals[5] == "true", int(vals[6]), int(vals[7]), int(vals[8]), \
            vals[9] == "true", float(vals[10])
        for type_name in TYPES[types]:
            for incremental in (False, True):
                cases.append((type_name, n_head, head_dim, n_cells, kv_size, n_group, trans, pad, n_pass, special,
                              scale, incremental))
    return cases


def special_cache(rng, type_name: str, n_rows: int, n_values: int) -> np.ndarray:
    """The .inc's special values: around the smallest normal (subnormals), ties at +-0.375, +-0, one Inf."""
    tiny = float(np.finfo(np.float16).tiny) if type_name == "f16" else float(np.finfo(np.float32).tiny)
    kind = rng.integers(0, 10, size=(n_rows, n_values))
    u = rng.uniform(-4, 4, size=kind.shape)
    x = np.select([kind < 4, kind < 7, kind < 8, kind < 9], [u * tiny, np.where(kind % 2, 0.375, -0.375), 0.0, -0.0],
                  u).astype(np.float32)
    x.reshape(-1)[2 * x.size // 3] = np.inf
    return float_cache(x, type_name)


def backend_ops_lists(rng, n_cells: int, n_group: int, n_pass: int) -> list[np.ndarray]:
    """One list per pass as the .inc builds them: ~85 % of the cells shuffled, skipped entries, sinks."""
    lists = []
    for _ in range(n_pass):
        order = rng.permutation(n_cells)
        e = np.arange(n_cells)
        code = (e % n_group) | ref.OBSERVE
        code = np.where(e % 5 != 1, code | ref.PROCESS | ref.HIST, code)
        code = np.where((e >= n_cells * 85 // 100) | (e % 7 == 3), -1, code)
        lists.append(np.stack([order, code], axis=1).astype(np.int32))
    return lists


@pytest.mark.parametrize("case", backend_ops_cases(), ids=lambda c: "-".join(map(str, c)))
def test_backend_ops_case(ggml_cpu, cuda_host, case):
    """Each test-backend-ops case on the CPU op (against the numpy reference) and on the CUDA kernels' thread logic
    (bit for bit against the CPU): passes in sequence, the row pitch of the case, holes, special values."""
    type_name, n_head, head_dim, n_cells, kv_size, n_group, trans, pad, n_pass, special, scale, incremental = case
    rng = np.random.default_rng(n_cells + 7 * n_head + head_dim)
    n_embd = n_head * head_dim
    rows, n_values = (n_embd, n_cells) if trans else (n_cells, n_embd)
    raw = special_cache(rng, type_name, rows, n_values) if special else make_inputs(
        int(rng.integers(1 << 30)), type_name, n_head, head_dim, n_cells, 1, trans)[0]
    width = ref.FLOAT_BYTES.get(type_name)
    pad_bytes = (kv_size - n_cells) * width if trans else (pad * width if width else pad // ref.BLOCK * ref.QBLOCK_BYTES[type_name])
    state = np.zeros((n_group, n_head, ref.NSTATE))
    if incremental:
        state[..., ref.S], state[..., ref.N] = 400.0, 1000.0
    host, cpu, want = (raw, state), (raw, state), (raw, state)
    for cells in backend_ops_lists(rng, n_cells, n_group, n_pass):
        host = cuda_host.kv_sparsify(host[0], type_name, n_values, cells, host[1], scale, trans, incremental,
                                     pad=pad_bytes)
        cpu = ggml_cpu.kv_sparsify(cpu[0], type_name, n_values, cells, cpu[1], scale, trans, incremental)
        assert_bit_identical(host, cpu)
        r = ref.kv_sparsify(want[0], type_name, cells, want[1], scale, trans=trans, incremental=incremental)
        assert_same_pass(*cpu, r, type_name, trans, n_head)
        want = (r.raw, r.state)
    assert not np.array_equal(cpu[0], raw), "the passes zeroed nothing: the case tests nothing"


@pytest.mark.parametrize("trans", [False, True], ids=["rows", "trans"])
def test_sum_order_matters_and_matches(ggml_cpu, cuda_host, trans):
    """f32 values over 40 binary orders of magnitude, one cell per group, so that S is one cell's sum: such sums
    round in double, and the order of addition shows in S's bits (f16 and quantized values add exactly in double,
    in any order, and a 1-ulp change of one cell vanishes in a sum over many). The host grid equals the CPU bit
    for bit, and a plain sequential order would not: the test can tell orders apart."""
    rng = np.random.default_rng(53)
    n_cells, n_head, head_dim = 300, 2, 64
    x = rng.laplace(size=(n_cells, n_head * head_dim)) * 2.0 ** rng.integers(-20, 21, (n_cells, n_head * head_dim))
    raw = float_cache(x.astype(np.float32).T.copy() if trans else x.astype(np.float32), "f32")
    n_values = n_cells if trans else n_head * head_dim
    cells, state = all_processed(n_cells, n_cells), np.zeros((n_cells, n_head, ref.NSTATE))
    host = cuda_host.kv_sparsify(raw, "f32", n_values, cells, state, 0.5, trans)
    assert_bit_identical(host, ggml_cpu.kv_sparsify(raw, "f32", n_values, cells, state, 0.5, trans))
    vals = np.abs(ref.decode(raw, "f32").astype(np.float64))
    per_cell = (vals.T if trans else vals).reshape(n_cells, n_head, head_dim)
    seq = np.zeros((n_cells, n_head))
    for j in range(head_dim):  # value by value: the transposed layout's order, not the rows' 8 lanes
        seq += per_cell[:, :, j]
    differ = (seq != host[1][..., ref.S]).sum()
    assert (differ == 0) if trans else (differ > n_cells // 20), differ
