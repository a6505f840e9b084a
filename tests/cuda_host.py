# SPDX-License-Identifier: Apache-2.0
"""Runs the CUDA kernels' per-thread logic on the host, through ctypes: tests/cuda/kv_sparsify_host.cu built by
nvcc (scripts/setup/check_cuda_compile.build_host_lib) walks the grid of every launch of GGML_OP_KV_SPARSIFY on the
CPU with the kernels' own __host__ __device__ functions. Same call as tests/ggml_op.GgmlCpu.kv_sparsify, plus a row
pitch, so that the two can be compared byte for byte."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from elastickv import reference as ref
from elastickv.reference import GGML_TYPE_ID


class CudaHost:
    """The CUDA kernels' thread logic, built for the host."""

    def __init__(self, lib: Path) -> None:
        self.lib = ctypes.CDLL(str(lib))
        vp, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
        self.lib.kvs_host_pass.argtypes = [vp, i32, i64, i64, i64, vp, i32, vp, i32, i32, i32, ctypes.c_float,
                                           ctypes.c_bool, ctypes.c_bool]
        self.lib.kvs_host_pass.restype = i32
        self.lib.kvs_host_tau_bits.argtypes = [f64, i32]
        self.lib.kvs_host_tau_bits.restype = ctypes.c_uint32

    def tau_bits(self, tau: float, type_name: str) -> int:
        return int(self.lib.kvs_host_tau_bits(tau, GGML_TYPE_ID[type_name]))

    def kv_sparsify(self, raw: np.ndarray, type_name: str, n_values: int, cells: np.ndarray, state: np.ndarray,
                    scale: float, trans: bool = False, incremental: bool = False, pad: int = 0):
        """raw: [rows, row_bytes] as for GgmlCpu. ``pad`` extra bytes after every row (a row pitch larger than a
        row, as in a cache view); they must come back untouched. Returns (raw_after, state_after)."""
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        n_rows, row_bytes = raw.shape
        buf = np.full((n_rows, row_bytes + pad), 0xA5, dtype=np.uint8)
        buf[:, :row_bytes] = raw
        cells = np.ascontiguousarray(cells, dtype=np.int32).reshape(-1, 2)
        st = np.ascontiguousarray(state, dtype=np.float64).copy()
        n_group, n_head, _ = st.shape
        nb0 = ref.FLOAT_BYTES.get(type_name) or ref.QBLOCK_BYTES[type_name]  # ggml's nb[0]: a value or a block
        if trans:  # rows are embedding indices, one value per cell
            n_cells, head_dim = n_values, n_rows // n_head
        else:
            n_cells, head_dim = n_rows, n_values // n_head
        rc = self.lib.kvs_host_pass(buf.ctypes.data, GGML_TYPE_ID[type_name], nb0, row_bytes + pad, n_cells,
                                    cells.ctypes.data if cells.size else None, cells.shape[0], st.ctypes.data,
                                    n_head, head_dim, n_group, scale, trans, incremental)
        if rc != 0:
            raise ValueError(f"kvs_host_pass refused type {type_name} (trans={trans})")
        assert (buf[:, row_bytes:] == 0xA5).all(), "the pass wrote past a row"
        return np.ascontiguousarray(buf[:, :row_bytes]), st
