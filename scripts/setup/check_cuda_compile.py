#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Compile-only check of the ElasticKV CUDA kernel: nvcc -c ggml-cuda/kv-sparsify.cu against the pinned,
patched ggml headers (build/llama.cpp) for one architecture (default sm_90). No GPU is needed.

ggml-cuda's common header includes <cublas_v2.h>, which the CUDA compiler package does not ship; the
headers are taken from the pinned PyPI wheel nvidia-cublas (cached in build/downloads).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from elastickv import paths, pypi  # noqa: E402

CUBLAS = {
    "project": "nvidia-cublas",
    "version": "13.10.0.20",
    "filename": "nvidia_cublas-13.10.0.20-py3-none-manylinux1_x86_64.manylinux_2_5_x86_64.whl",
    "sha256": "dcc6d63884c53d07e267ce7e6feac17b2538cebaafec5db865736c3e28e4dc84",
    "include": "nvidia/cu13/include/",
}
OUT = paths.BUILD / "cuda-check"


def cublas_headers() -> Path:
    """Folder with cublas_v2.h and friends, extracted from the pinned wheel."""
    dest = OUT / "cublas-include"
    if (dest / "cublas_v2.h").exists():
        return dest
    wheel = pypi.fetch(CUBLAS["project"], CUBLAS["version"], CUBLAS["filename"], CUBLAS["sha256"], paths.DOWNLOADS)
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(CUBLAS["include"]) and not name.endswith("/"):
                (dest / Path(name).name).write_bytes(z.read(name))
    return dest


def _nvcc_and(source: Path) -> str:
    """nvcc's path, once nvcc and a source file of the patched tree are there (FileNotFoundError otherwise)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise FileNotFoundError("nvcc is not on PATH (install the CUDA toolkit)")
    if not source.exists():
        raise FileNotFoundError(f"{paths.relative(source)} is missing: patch the tree first (make build)")
    return nvcc


def compile_kernel(arch: str = "90", tree: Path = paths.LLAMA_SRC) -> subprocess.CompletedProcess:
    """Runs nvcc on the kernel's translation unit; returns the finished process (output in stdout)."""
    src = tree / "ggml" / "src" / "ggml-cuda" / "kv-sparsify.cu"
    nvcc = _nvcc_and(src)
    OUT.mkdir(parents=True, exist_ok=True)
    # -use_fast_math as ggml-cuda's CMakeLists builds it (flush-to-zero: the kernel must not depend on it)
    cmd = [nvcc, "-std=c++17", f"-arch=sm_{arch}", "-use_fast_math", "-c", str(src), "-o", str(OUT / f"kv-sparsify.sm_{arch}.o"),
           "-I", str(tree / "ggml" / "include"), "-I", str(tree / "ggml" / "src"),
           "-I", str(tree / "ggml" / "src" / "ggml-cuda"), "-I", str(cublas_headers()),
           "-Xcompiler", "-Wall"]
    return subprocess.run(cmd, capture_output=True, text=True)


def build_host_lib(tree: Path = paths.LLAMA_SRC) -> Path:
    """Builds tests/cuda/kv_sparsify_host.cu with nvcc into a shared library: the CUDA kernels' per-thread logic
    (ggml-cuda/kv-sparsify-thread.cuh of the patched tree) run on the host. Rebuilt when a source is newer.
    Raises FileNotFoundError (no nvcc, unpatched tree) or RuntimeError (nvcc failed, with its output)."""
    header = tree / "ggml" / "src" / "ggml-cuda" / "kv-sparsify-thread.cuh"
    nvcc = _nvcc_and(header)
    src = paths.ROOT / "tests" / "cuda" / "kv_sparsify_host.cu"
    lib = OUT / "libkvs_host.so"
    deps = [src, header, tree / "ggml" / "include" / "ggml-kv-sparsify.h"]
    if lib.exists() and all(lib.stat().st_mtime >= d.stat().st_mtime for d in deps):
        return lib
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(".tmp.so")
    cmd = [nvcc, "-std=c++17", "-O2", "-shared", "-Xcompiler", "-fPIC,-Wall", str(src), "-o", str(tmp),
           "-I", str(tree / "ggml" / "include"), "-I", str(tree / "ggml" / "src" / "ggml-cuda")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {paths.relative(src)}:\n{proc.stdout}{proc.stderr}")
    tmp.replace(lib)
    return lib


def own_warnings(proc: subprocess.CompletedProcess) -> list[str]:
    """Warnings raised in the hook's own CUDA files (upstream headers have some of their own under -Wall)."""
    return [line for line in (proc.stdout + proc.stderr).splitlines()
            if "kv-sparsify" in line and "warning" in line.lower()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="90", help="CUDA architecture number (default: %(default)s)")
    args = ap.parse_args()
    try:
        proc = compile_kernel(args.arch)
    except (FileNotFoundError, pypi.FetchError) as e:
        print(f"check_cuda_compile: {e}", file=sys.stderr)
        return 1
    warnings = own_warnings(proc)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout + proc.stderr)
    for w in warnings:
        print(w)
    ok = proc.returncode == 0 and not warnings
    print(f"check_cuda_compile: nvcc sm_{args.arch}: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
