# SPDX-License-Identifier: Apache-2.0
"""The CUDA kernel compiles (nvcc -c, sm_90) against the pinned, patched ggml headers. No GPU needed.
Running it (test-backend-ops against the CPU, compute-sanitizer) needs a GPU: see README.md."""

from __future__ import annotations

import shutil
import sys

import pytest

from elastickv import paths

sys.path.insert(0, str(paths.ROOT / "scripts" / "setup"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed on this machine")
def test_cuda_kernel_compiles_for_sm90():
    import check_cuda_compile

    proc = check_cuda_compile.compile_kernel("90")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert check_cuda_compile.own_warnings(proc) == []
    assert (check_cuda_compile.OUT / "kv-sparsify.sm_90.o").stat().st_size > 10_000
