# SPDX-License-Identifier: Apache-2.0
"""The readable definition of the ElasticKV op (``GGML_OP_KV_SPARSIFY``), in numpy.

The CPU kernel (``cuda_hook/tree/ggml/src/ggml-cpu/kv-sparsify.cpp``) and the CUDA kernel
(``cuda_hook/tree/ggml/src/ggml-cuda/kv-sparsify.cu``) implement exactly this, and the test suite
compares them with it. SPEC.md §1 defines the method; this module defines one pass of it over the
cells of one cache stream:

* ``cells`` lists ``(cell index, code)`` pairs. ``code < 0`` skips the entry; ``code & 0xFFFF`` is the
  statistic group (a sequence); the flags PROCESS, OBSERVE and HIST say what happens to the cell.
* For every group g and KV head h: ``S_pass, N_pass`` = sum and count of ``|x|`` over the PROCESS cells
  of g (values as stored: dequantized for q8_0/q4_0/q5_0). Full mode: ``S, N = S_pass, N_pass``;
  incremental mode: ``S += S_pass, N += N_pass``. ``tau = scale * (S / N)`` in float64.
* Every value of a PROCESS cell with ``|x| < tau`` (compared in float64) becomes an exact zero: 0.0 for
  float types, the code of 0 for quantized types (q8_0: 0, q4_0: nibble 8, q5_0: code 16). A value that
  is already zero is left as stored (so -0.0 stays -0.0).
* Afterwards the non-zeros of PROCESS and OBSERVE cells are counted, and for HIST cells the number of
  non-zeros in each aligned 32-value block of a head is histogrammed (33 bins, full blocks only).

The cache tensor is passed as raw bytes so that quantized codes are handled exactly:
``raw`` has shape ``[n_rows, row_bytes]`` (uint8): one row per cell, or, for the transposed V layout
(flash attention off), one row per embedding index ``j`` holding all cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Per-cell code flags, as in ggml/include/ggml-kv-sparsify.h.
GROUP_MASK = 0xFFFF
PROCESS = 1 << 16
OBSERVE = 1 << 17
HIST = 1 << 18
BLOCK = 32

# State fields of one (group, head), as in ggml_kv_sparsify_state.
S, N, TAU, N_PROC, NNZ_PROC, N_OBS, NNZ_OBS, S_PASS, N_PASS, HIST0 = range(10)
NSTATE = HIST0 + BLOCK + 1

SUPPORTED_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q5_0")
#: bytes per 32-value block of the quantized types
QBLOCK_BYTES = {"q8_0": 34, "q4_0": 18, "q5_0": 22}
#: bytes per value of the float types
FLOAT_BYTES = {"f32": 4, "f16": 2, "bf16": 2}
#: ggml_type enum values (ggml/include/ggml.h)
GGML_TYPE_ID = {"f32": 0, "f16": 1, "q4_0": 2, "q5_0": 6, "q8_0": 8, "bf16": 30}


def row_bytes(type_name: str, n_values: int) -> int:
    """Bytes of a row of ``n_values`` values of this type."""
    if type_name in FLOAT_BYTES:
        return FLOAT_BYTES[type_name] * n_values
    assert n_values % BLOCK == 0, "quantized rows hold whole 32-value blocks"
    return QBLOCK_BYTES[type_name] * (n_values // BLOCK)


def decode(raw: np.ndarray, type_name: str) -> np.ndarray:
    """Values of a ``[n_rows, row_bytes]`` uint8 array as float32 ``[n_rows, n_values]``."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    n_rows = raw.shape[0]
    if type_name == "f32":
        return raw.view(np.float32).reshape(n_rows, -1).copy()
    if type_name == "f16":
        return raw.view(np.float16).reshape(n_rows, -1).astype(np.float32)
    if type_name == "bf16":
        bits = raw.view(np.uint16).reshape(n_rows, -1).astype(np.uint32) << 16
        return bits.view(np.float32)
    blocks = raw.reshape(n_rows, -1, QBLOCK_BYTES[type_name])
    d = blocks[:, :, 0:2].copy().view(np.float16).astype(np.float32)  # [rows, nb, 1]
    codes = quant_codes(blocks, type_name)  # [rows, nb, 32] signed value codes
    values = codes.astype(np.float32) * d
    return values.reshape(n_rows, -1)


def quant_codes(blocks: np.ndarray, type_name: str) -> np.ndarray:
    """Signed integer value of each element of quantized blocks ``[rows, nb, block_bytes]``:
    x = d * code (q8_0: q; q4_0: nibble - 8; q5_0: (nibble | high bit << 4) - 16)."""
    if type_name == "q8_0":
        return blocks[:, :, 2:34].copy().view(np.int8).astype(np.int32)
    if type_name == "q4_0":
        qs = blocks[:, :, 2:18].astype(np.int32)
        return np.concatenate([qs & 0x0F, qs >> 4], axis=2) - 8
    if type_name == "q5_0":
        qh = blocks[:, :, 2:6].copy().view(np.uint32).astype(np.int64)  # [rows, nb, 1]
        qs = blocks[:, :, 6:22].astype(np.int64)
        bits = (qh >> np.arange(BLOCK)) & 1  # bit i of qh belongs to element i
        nib = np.concatenate([qs & 0x0F, qs >> 4], axis=2)
        return (nib | (bits << 4)).astype(np.int32) - 16
    raise ValueError(f"not a quantized type: {type_name}")


def zero_entries(raw: np.ndarray, type_name: str, mask: np.ndarray) -> np.ndarray:
    """A copy of ``raw`` with the entries where ``mask`` ([n_rows, n_values] bool) is true set to an
    exact zero of the type (the code of 0 for quantized types; their scale d is untouched)."""
    out = np.ascontiguousarray(raw, dtype=np.uint8).copy()
    n_rows = out.shape[0]
    if type_name in FLOAT_BYTES:
        width = FLOAT_BYTES[type_name]
        view = out.view({4: np.uint32, 2: np.uint16}[width]).reshape(n_rows, -1)
        view[mask] = 0
        return out
    blocks = out.reshape(n_rows, -1, QBLOCK_BYTES[type_name])
    m = mask.reshape(n_rows, blocks.shape[1], BLOCK)
    if type_name == "q8_0":
        qs = blocks[:, :, 2:34]
        qs[m] = 0
    elif type_name == "q4_0":
        qs = blocks[:, :, 2:18]
        qs[:] = np.where(m[:, :, :16], (qs & 0xF0) | 0x08, qs)
        qs[:] = np.where(m[:, :, 16:], (qs & 0x0F) | 0x80, qs)
    elif type_name == "q5_0":
        qs = blocks[:, :, 6:22]
        qs[:] = np.where(m[:, :, :16], qs & 0xF0, qs)
        qs[:] = np.where(m[:, :, 16:], qs & 0x0F, qs)
        qh = blocks[:, :, 2:6].copy().view(np.uint32)[:, :, 0]
        setbits = (m.astype(np.uint32) << np.arange(BLOCK, dtype=np.uint32)).sum(axis=2, dtype=np.uint32)
        blocks[:, :, 2:6] = (qh | setbits)[:, :, None].view(np.uint8).reshape(n_rows, -1, 4)
    return out


@dataclass
class PassResult:
    """What one pass returns: the cache after the pass and the state of every (group, head)."""

    raw: np.ndarray  # same layout as the input
    state: np.ndarray  # float64 [n_group, n_head, NSTATE]


def kv_sparsify(
    raw: np.ndarray,
    type_name: str,
    cells: np.ndarray,
    state: np.ndarray,
    scale: float,
    trans: bool = False,
    incremental: bool = False,
) -> PassResult:
    """One pass of the op over one cache stream.

    Parameters
    ----------
    raw : uint8 ``[n_cells, row_bytes]``, or ``[n_embd, n_cells * value_bytes]`` when ``trans``.
    type_name : one of ``SUPPORTED_TYPES`` (quantized types only when not ``trans``).
    cells : int32 ``[n_list, 2]``: (cell index, code); every cell at most once.
    state : float64 ``[n_group, n_head, NSTATE]``; S and N carry over in incremental mode.
    scale : the threshold scale (float32 in the op).
    """
    if type_name not in SUPPORTED_TYPES:
        raise ValueError(f"unsupported cache type {type_name!r}; accepted: {', '.join(SUPPORTED_TYPES)}")
    if trans and type_name not in FLOAT_BYTES:
        raise ValueError("a transposed cache is never quantized")
    state = np.array(state, dtype=np.float64, copy=True)
    n_group, n_head, nstate = state.shape
    assert nstate == NSTATE
    cells = np.asarray(cells, dtype=np.int32).reshape(-1, 2)

    values = decode(raw, type_name)  # [rows, n_values]
    if trans:
        values = values.T  # [n_cells, n_embd]
    n_embd = values.shape[1]
    head_dim = n_embd // n_head
    n_blocks_full = head_dim // BLOCK

    keep = cells[:, 1] >= 0
    cell_idx = cells[keep, 0]
    codes = cells[keep, 1]
    groups = codes & GROUP_MASK
    proc = (codes & PROCESS) != 0
    obs = (codes & OBSERVE) != 0
    hist = (codes & HIST) != 0
    assert len(np.unique(cell_idx)) == len(cell_idx), "a cell may appear once in a list"

    scale64 = np.float64(np.float32(scale))
    zero_mask = np.zeros(values.shape, dtype=bool)
    state[:, :, N_PROC:] = 0.0

    for h in range(n_head):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        x = values[cell_idx, cols]  # [n_list, head_dim], float32
        ax = np.abs(x).astype(np.float64)

        # statistic over the PROCESS cells of each group
        s_pass = np.bincount(groups[proc], weights=ax[proc].sum(axis=1), minlength=n_group)
        n_pass = np.bincount(groups[proc], minlength=n_group).astype(np.float64) * head_dim
        st = state[:, h, :]
        st[:, S_PASS] = s_pass
        st[:, N_PASS] = n_pass
        if incremental:
            st[:, S] += s_pass
            st[:, N] += n_pass
        else:
            st[:, S] = s_pass
            st[:, N] = n_pass
        with np.errstate(invalid="ignore", divide="ignore"):
            st[:, TAU] = np.where(st[:, N] > 0, scale64 * (st[:, S] / st[:, N]), 0.0)

        # zero |x| < tau in PROCESS cells (values already zero stay as stored)
        tau = st[groups, TAU][:, None]
        z = proc[:, None] & (ax < tau) & (x != 0)
        zero_mask[cell_idx, cols] = z
        after = np.where(z, 0.0, x)
        nnz = (after != 0).sum(axis=1)

        np.add.at(st[:, N_PROC], groups[proc], head_dim)
        np.add.at(st[:, NNZ_PROC], groups[proc], nnz[proc])
        np.add.at(st[:, N_OBS], groups[obs], head_dim)
        np.add.at(st[:, NNZ_OBS], groups[obs], nnz[obs])
        if n_blocks_full:
            per_block = (after[:, : n_blocks_full * BLOCK] != 0).reshape(len(after), n_blocks_full, BLOCK).sum(axis=2)
            for g, counts in zip(groups[hist], per_block[hist]):
                np.add.at(st[g, HIST0:], counts, 1.0)

    mask_raw = zero_mask.T if trans else zero_mask
    return PassResult(raw=zero_entries(raw, type_name, mask_raw), state=state)


def threshold_dump(values: np.ndarray, groups: np.ndarray, process: np.ndarray, scale: float) -> np.ndarray:
    """Full-mode rule applied to dumped values: which entries a pass zeroes.

    ``values`` float32 ``[n_cells, n_head, head_dim]`` (an ``ELASTICKV_DUMP`` "before" array),
    ``groups`` and ``process`` per cell. Returns the bool zero mask of the same shape as ``values``.
    """
    ax = np.abs(values).astype(np.float64)
    mask = np.zeros(values.shape, dtype=bool)
    scale64 = np.float64(np.float32(scale))
    for g in np.unique(groups[process]):
        sel = process & (groups == g)
        s = ax[sel].sum(axis=(0, 2))  # per head
        n = sel.sum() * values.shape[2]
        tau = scale64 * (s / n)
        mask[sel] = (ax[sel] < tau[None, :, None]) & (values[sel] != 0)
    return mask


def threshold_dump_incremental(values: np.ndarray, new: np.ndarray, s: np.ndarray, n: np.ndarray,
                               scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Incremental-mode rule applied to the dumped values of one sequence (one statistic group) at one pass.

    The running statistic ``s``, ``n`` (float64 ``[n_head]``: sum of |x| and count of the values every earlier
    pass thresholded since the sequence's last reset) grows by the ``new`` cells (bool per cell: never
    thresholded, outside the sinks); ``tau = scale * s / n`` per head; only the new cells are thresholded.
    Returns (zero mask of the shape of ``values``, s, n, tau) after the pass.
    """
    ax = np.abs(values).astype(np.float64)
    s = np.asarray(s, dtype=np.float64) + ax[new].sum(axis=(0, 2))
    n = np.asarray(n, dtype=np.float64) + new.sum() * values.shape[2]
    scale64 = np.float64(np.float32(scale))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.where(n > 0, scale64 * (s / n), 0.0)
    mask = np.zeros(values.shape, dtype=bool)
    mask[new] = (ax[new] < tau[None, :, None]) & (values[new] != 0)
    return mask, s, n, tau
