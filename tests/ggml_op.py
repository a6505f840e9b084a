# SPDX-License-Identifier: Apache-2.0
"""Runs the compiled GGML_OP_KV_SPARSIFY of the patched ggml on the CPU, through ctypes.

This drives the real libggml-base / libggml-cpu of build/llama.cpp/build-cpu (no mock): it builds a one-op
graph on tensors holding the given bytes and returns the cache and state after the pass.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from elastickv import paths
from elastickv.reference import GGML_TYPE_ID, NSTATE

GGML_TYPE_I32 = 26
GGML_TYPE_F64 = 28


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class GgmlCpu:
    """The patched ggml's CPU backend, loaded from a build folder."""

    def __init__(self, lib_dir: Path | None = None) -> None:
        lib_dir = lib_dir or paths.build_dir() / "bin"
        base = lib_dir / "libggml-base.so"
        cpu = lib_dir / "libggml-cpu.so"
        if not base.exists() or not cpu.exists():
            raise FileNotFoundError(f"{base} / {cpu} not built (make build)")
        self.base = ctypes.CDLL(str(base), mode=ctypes.RTLD_GLOBAL)
        self.cpu = ctypes.CDLL(str(cpu), mode=ctypes.RTLD_GLOBAL)
        b, c = self.base, self.cpu
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        b.ggml_init.argtypes, b.ggml_init.restype = [_InitParams], vp
        b.ggml_free.argtypes, b.ggml_free.restype = [vp], None
        b.ggml_new_tensor_2d.argtypes, b.ggml_new_tensor_2d.restype = [vp, ctypes.c_int, i64, i64], vp
        b.ggml_new_tensor_3d.argtypes, b.ggml_new_tensor_3d.restype = [vp, ctypes.c_int, i64, i64, i64], vp
        b.ggml_get_data.argtypes, b.ggml_get_data.restype = [vp], vp
        b.ggml_nbytes.argtypes, b.ggml_nbytes.restype = [vp], ctypes.c_size_t
        b.ggml_new_graph.argtypes, b.ggml_new_graph.restype = [vp], vp
        b.ggml_build_forward_expand.argtypes, b.ggml_build_forward_expand.restype = [vp, vp], None
        b.ggml_kv_sparsify.argtypes = [vp, vp, vp, vp, ctypes.c_float, ctypes.c_bool, ctypes.c_bool]
        b.ggml_kv_sparsify.restype = vp
        c.ggml_cpu_init.argtypes, c.ggml_cpu_init.restype = [], None
        c.ggml_graph_compute_with_ctx.argtypes = [vp, vp, ctypes.c_int]
        c.ggml_graph_compute_with_ctx.restype = ctypes.c_int
        c.ggml_cpu_init()

    def _tensor(self, ctx: int, type_id: int, shape: tuple[int, ...], data: np.ndarray) -> int:
        if len(shape) == 2:
            t = self.base.ggml_new_tensor_2d(ctx, type_id, *shape)
        else:
            t = self.base.ggml_new_tensor_3d(ctx, type_id, *shape)
        buf = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        n = self.base.ggml_nbytes(t)
        assert n == buf.size, (n, buf.size)
        ctypes.memmove(self.base.ggml_get_data(t), buf.ctypes.data, n)
        return t

    def _read(self, t: int, nbytes: int) -> np.ndarray:
        out = np.empty(nbytes, dtype=np.uint8)
        ctypes.memmove(out.ctypes.data, self.base.ggml_get_data(t), nbytes)
        return out

    def kv_sparsify(self, raw: np.ndarray, type_name: str, n_values: int, cells: np.ndarray, state: np.ndarray,
                    scale: float, trans: bool = False, incremental: bool = False, n_threads: int = 2):
        """Same arguments as :func:`elastickv.reference.kv_sparsify` plus ``n_values`` (ne0 of the tensor:
        the row width in values). Returns (raw_after, state_after)."""
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        cells = np.ascontiguousarray(cells, dtype=np.int32).reshape(-1, 2)
        state = np.ascontiguousarray(state, dtype=np.float64)
        n_group, n_head, _ = state.shape
        size = raw.nbytes + cells.nbytes + state.nbytes + 64 * 1024 + 16 * 1024 * 1024
        ctx = self.base.ggml_init(_InitParams(size, None, False))
        try:
            a = self._tensor(ctx, GGML_TYPE_ID[type_name], (n_values, raw.shape[0]), raw)
            c = self._tensor(ctx, GGML_TYPE_I32, (2, max(1, cells.shape[0])),
                             cells if cells.size else np.array([[0, -1]], dtype=np.int32))
            s = self._tensor(ctx, GGML_TYPE_F64, (NSTATE, n_head, n_group), state)
            op = self.base.ggml_kv_sparsify(ctx, a, c, s, scale, trans, incremental)
            gf = self.base.ggml_new_graph(ctx)
            self.base.ggml_build_forward_expand(gf, op)
            status = self.cpu.ggml_graph_compute_with_ctx(ctx, gf, n_threads)
            if status != 0:
                raise RuntimeError(f"ggml_graph_compute_with_ctx returned {status}")
            raw_after = self._read(a, raw.nbytes).reshape(raw.shape)
            state_after = self._read(s, state.nbytes).view(np.float64).reshape(state.shape)
            return raw_after, state_after
        finally:
            self.base.ggml_free(ctx)
