#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The standing GPU check (../shared/DEVICE.md): the one prepared procedure a session lent the GPU machine runs
# first, from the repository root, with the pack of scripts/gpu/pack.py carried (build/gpu-pack):
#
#   bash scripts/gpu/verify.sh            # on the GPU machine: results in $OUT (summary.json, results.tar.gz)
#   bash scripts/gpu/verify.sh --dry-run  # here: every preparation that needs no GPU, and the commands it would run
#
# Steps, in order; each is logged with its exit status and time, and a failed step does not stop the next:
#   prepare           the pack against this copy (pack.py --check), the tree unpacked to build/llama.cpp (the
#                     records then name relative paths), wheels, a random-weights model of SmolLM2-135M's shape in
#                     f32 (correctness) and q4_1 (decode speed) (write_model.py), a slice of WikiText-2 test
#   build             CUDA build for sm_90 of test-backend-ops, llama-perplexity, llama-bench (build_llamacpp.sh
#                     --cuda --no-patch; the server off; FA pairs f16, q8_0, q4_0 only)
#   test-backend-ops  test -o KV_SPARSIFY -b CUDA0: the CUDA op against the CPU op, every type and mode
#   hook-agreement    hook-on llama-perplexity -ngl 99 against -ngl 0 -dev none, every cache type, both V
#                     layouts, full and incremental (hook_agreement.py)
#   sanitizer-*       compute-sanitizer memcheck (all kernels) on two short hook runs and racecheck (the hook's
#                     kernels, kvs_*) on one
#   op-bandwidth      scripts/bench/op_bandwidth.py on CUDA0 (test-backend-ops perf -p kvbench; a subset of shapes)
#   decode-overhead   scripts/bench/decode_overhead.py --variant cuda (llama-bench -ngl 99, depths 4096 and 16384)
# A step that would not finish inside the time budget is skipped (and says so). After every step the record is
# rewritten: <results>/summary.json, copied with a tar.gz of <results>/ into $OUT, so a run cut short returns
# what it did. scripts/gpu/archive.py files the returned folder under results/gpu/<commit>/.
#
# Options:
#   --dry-run        prepare (tiny model), print the other steps' commands, run nothing that needs a GPU
#   --pack DIR       the pack (default: build/gpu-pack)
#   --work DIR       models, wheels, scratch (default: build/gpu-work; --dry-run: build/gpu-dry)
#   --tree DIR       where the packed llama.cpp is unpacked and built (default: build/llama.cpp; --dry-run:
#                    <work>/llama.cpp)
#   --results DIR    the results folder (default: results/gpu/<commit>, as archived; --dry-run: <work>/results)
#   --out DIR        what goes back (default: $OUT, else <work>/out)
#   --budget S       seconds for the whole check (default: 540, inside the run's 600 s)
#   --quick          two cache configurations in hook-agreement instead of six
#   -j N             build jobs (default: number of cores)
# Environment: PYTHON (default: .venv/bin/python if present, else python3), SANITIZER_KERNELS (racecheck's kernel
# filter, default kns=kvs_; empty: every kernel).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
die() { echo "verify: $*" >&2; exit 2; }

DRY_RUN=0
PACK=build/gpu-pack
WORK=""
TREE=""
RESULTS=""
OUTDIR=${OUT:-}
BUDGET=540
QUICK=0
JOBS=$(nproc 2>/dev/null || echo 4)
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '3,/^set -uo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --pack) PACK=${2:?--pack needs a folder}; shift 2 ;;
        --work) WORK=${2:?--work needs a folder}; shift 2 ;;
        --tree) TREE=${2:?--tree needs a folder}; shift 2 ;;
        --results) RESULTS=${2:?--results needs a folder}; shift 2 ;;
        --out) OUTDIR=${2:?--out needs a folder}; shift 2 ;;
        --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
        --quick) QUICK=1; shift ;;
        -j) JOBS=${2:?-j needs a number}; shift 2 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [ "$DRY_RUN" = 1 ]; then
    WORK=${WORK:-build/gpu-dry}
    TREE=${TREE:-$WORK/llama.cpp}
else
    WORK=${WORK:-build/gpu-work}
    TREE=${TREE:-build/llama.cpp}
fi
OUTDIR=${OUTDIR:-$WORK/out}
FA_QUANTS="f16-f16;q8_0-q8_0;q4_0-q4_0"
TARGETS=(test-backend-ops llama-perplexity llama-bench)
BIN=$TREE/build-cuda/bin
T0=$(date +%s)
mkdir -p "$WORK" "$OUTDIR" || die "cannot create $WORK or $OUTDIR"

# ---- prepare: everything that needs no GPU ----
PREP_LOG=$WORK/prepare.log
: > "$PREP_LOG"
prep() { echo "+ $*" >> "$PREP_LOG"; "$@" >> "$PREP_LOG" 2>&1; }
PREP_OK=1
PREP_NOTE=""
if prep "$PYTHON" scripts/gpu/pack.py --check "$PACK" --install-wheels "$WORK/pylib" --check-out "$WORK/pack-check.json"; then
    COMMIT=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["commit"])' "$WORK/pack-check.json")
else
    COMMIT=unknown PREP_OK=0 PREP_NOTE="the pack is missing or broken (see prepare.log)"
fi
SHORT=${COMMIT:0:10}
if [ -z "$RESULTS" ]; then
    if [ "$DRY_RUN" = 1 ]; then RESULTS=$WORK/results/$SHORT; else RESULTS=results/gpu/$SHORT; fi
fi
rm -rf "$RESULTS" && mkdir -p "$RESULTS/logs" || die "cannot create $RESULTS"
# the pack's wheels and the harness package (scripts/elastickv: no pip install -e . on a bare GPU machine)
PYTHONPATH="$(cd "$WORK" && pwd)/pylib:$(pwd)/scripts${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH

if [ "$PREP_OK" = 1 ]; then
    # the packed tree, unpacked once per pack (a tree left by an earlier run of the same pack is built on)
    want=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["tree"]["sha256"])' "$PACK/PACK.json")
    if [ "$(cat "$TREE/.elastickv-gpu-tree" 2>/dev/null)" != "$want" ]; then
        rm -rf "$TREE" "$TREE.unpacking" && mkdir -p "$TREE.unpacking" &&
            prep tar -xJf "$PACK/llama.cpp.tar.xz" -C "$TREE.unpacking" &&
            mv "$TREE.unpacking/llama.cpp" "$TREE" && rmdir "$TREE.unpacking" && echo "$want" > "$TREE/.elastickv-gpu-tree" ||
            { PREP_OK=0; PREP_NOTE="unpacking the tree failed"; }
    fi
fi
if [ "$PREP_OK" = 1 ]; then
    SHAPE=smollm2-135m
    [ "$DRY_RUN" = 1 ] && SHAPE=tiny
    MODEL=$WORK/model-$SHAPE-f32.gguf
    BENCH_MODEL=$WORK/bench-$SHAPE-q4_1.gguf
    TEXT=$WORK/wiki.test.head.raw
    { [ -f "$MODEL" ] || prep "$PYTHON" scripts/gpu/write_model.py --shape "$SHAPE" --type f32 --out "$MODEL"; } &&
        { [ -f "$BENCH_MODEL" ] || prep "$PYTHON" scripts/gpu/write_model.py --shape "$SHAPE" --type q4_1 --out "$BENCH_MODEL"; } &&
        head -c 16384 data/wikitext-2-raw/wiki.test.raw > "$TEXT" ||
        { PREP_OK=0; PREP_NOTE="writing the model or the text failed"; }
fi

# the run's own record: commit and pack check, device, settings (summary.py puts the steps beside it)
V_GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1) \
V_NVCC=$(nvcc --version 2>/dev/null | tail -n 1) \
V_SAN=$(compute-sanitizer --version 2>/dev/null | grep -i version | head -n 1) \
V_COMMIT=$COMMIT V_DRY=$DRY_RUN V_T0=$T0 V_BUDGET=$BUDGET V_FA=$FA_QUANTS V_TARGETS="${TARGETS[*]}" V_QUICK=$QUICK \
"$PYTHON" - "$WORK/meta.json" "$WORK/pack-check.json" <<'EOF'
import datetime as dt, json, os, platform, sys
e = os.environ
check = json.load(open(sys.argv[2])) if os.path.exists(sys.argv[2]) else None
meta = {"commit": e["V_COMMIT"], "dry_run": e["V_DRY"] == "1", "pack_check": check,
        "started": dt.datetime.fromtimestamp(int(e["V_T0"]), dt.timezone.utc).isoformat(timespec="seconds"),
        "device": {"gpu": e["V_GPU"] or None, "nvcc": e["V_NVCC"] or None, "compute_sanitizer": e["V_SAN"] or None,
                   "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "settings": {"budget_s": int(e["V_BUDGET"]), "fa_quants": e["V_FA"], "cuda_arch": "90",
                     "targets": e["V_TARGETS"].split(), "quick": e["V_QUICK"] == "1"}}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF

finish() { "$PYTHON" scripts/gpu/summary.py finish --results "$RESULTS" --out "$OUTDIR" --meta "$WORK/meta.json" >/dev/null; }
record() {  # name status rc seconds log note command...
    local name=$1 status=$2 rc=$3 secs=$4 log=$5 note=$6
    shift 6
    "$PYTHON" scripts/gpu/summary.py step --results "$RESULTS" --name "$name" --status "$status" \
        ${rc:+--rc "$rc"} --seconds "$secs" --log "$log" --note "$note" --command "$*"
    echo "verify: $name: $status${rc:+ (exit $rc)} ${secs}s${note:+ — $note}" >&2
    finish
}
cp "$PREP_LOG" "$RESULTS/logs/prepare.log"
if [ "$PREP_OK" = 1 ]; then
    record prepare ok 0 $(( $(date +%s) - T0 )) "$RESULTS/logs/prepare.log" "" "see prepare.log"
else
    record prepare failed 1 $(( $(date +%s) - T0 )) "$RESULTS/logs/prepare.log" "$PREP_NOTE" "see prepare.log"
fi

# step NAME ESTIMATE_S TIMEOUT_S NEEDS -- command...: run it (or print it with --dry-run), log it, record it.
# NEEDS: a file that must exist (the binary the step runs), or "-".
step() {
    local name=$1 est=$2 limit=$3 needs=$4
    shift 5
    local log=$RESULTS/logs/$name.log left=$(( BUDGET - ($(date +%s) - T0) ))
    if [ "$DRY_RUN" = 1 ]; then
        echo "[dry-run] $name: $*"
        record "$name" dry-run "" 0 "" "" "$@"
    elif [ "$PREP_OK" != 1 ]; then
        record "$name" skipped "" 0 "" "prepare failed" "$@"
    elif [ "$needs" != - ] && [ ! -e "$needs" ]; then
        record "$name" skipped "" 0 "" "$needs is missing (build failed?)" "$@"
    elif [ "$left" -lt "$est" ]; then
        record "$name" skipped "" 0 "" "out of time: ${left}s of the budget left, the step needs about ${est}s" "$@"
    else
        [ "$limit" -gt "$left" ] && limit=$left
        local t=$(date +%s) rc=0
        timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1 || rc=$?
        local note=""
        [ "$rc" = 124 ] && note="killed after ${limit}s"
        record "$name" "$([ "$rc" = 0 ] && echo ok || echo failed)" "$rc" $(( $(date +%s) - t )) "$log" "$note" "$@"
    fi
}

step build 330 420 - -- \
    env LLAMA_CMAKE_FLAGS="-DLLAMA_BUILD_SERVER=OFF" scripts/setup/build_llamacpp.sh --tree "$TREE" --no-patch --cuda \
    --cuda-arch 90 --fa-quants "$FA_QUANTS" -j "$JOBS" "${TARGETS[@]}"

step test-backend-ops 20 120 "$BIN/test-backend-ops" -- \
    "$BIN/test-backend-ops" test -o KV_SPARSIFY -b CUDA0

QUICK_FLAG=()
[ "$QUICK" = 1 ] && QUICK_FLAG=(--quick)
step hook-agreement 100 240 "$BIN/llama-perplexity" -- \
    "$PYTHON" scripts/gpu/hook_agreement.py --bin "$BIN/llama-perplexity" --model "${MODEL:-}" --text "${TEXT:-}" \
    --out "$RESULTS/hook_agreement.json" --log-dir "$RESULTS/logs/ppl" "${QUICK_FLAG[@]}"
[ "$DRY_RUN" = 1 ] && "$PYTHON" scripts/gpu/hook_agreement.py --dry-run --bin "$BIN/llama-perplexity" --model "${MODEL:-}" \
    --text "${TEXT:-}" --out "$RESULTS/hook_agreement.json" --log-dir "$RESULTS/logs/ppl" "${QUICK_FLAG[@]}" | sed 's/^/[dry-run]   /'

SAN_RUN=(-c 256 -b 64 -ub 64 --chunks 1 -ngl 99)
hook_env() { echo "ELASTICKV=1 ELASTICKV_PRESET=sweet ELASTICKV_VERBOSE=1 ELASTICKV_MODE=$1"; }
# shellcheck disable=SC2046
step sanitizer-memcheck-f16-trans-full 60 180 "$BIN/llama-perplexity" -- \
    env $(hook_env full) compute-sanitizer --tool memcheck --error-exitcode 86 \
    "$BIN/llama-perplexity" -m "${MODEL:-}" -f "${TEXT:-}" "${SAN_RUN[@]}" -ctk f16 -ctv f16 -fa off
# shellcheck disable=SC2046
step sanitizer-memcheck-q4_0-rows-incremental 60 180 "$BIN/llama-perplexity" -- \
    env $(hook_env incremental) compute-sanitizer --tool memcheck --error-exitcode 86 \
    "$BIN/llama-perplexity" -m "${MODEL:-}" -f "${TEXT:-}" "${SAN_RUN[@]}" -ctk q4_0 -ctv q4_0 -fa on
KFILTER=()
[ -n "${SANITIZER_KERNELS-kns=kvs_}" ] && KFILTER=(--kernel-name "${SANITIZER_KERNELS-kns=kvs_}")
# shellcheck disable=SC2046
step sanitizer-racecheck-f16-rows-full 45 150 "$BIN/llama-perplexity" -- \
    env $(hook_env full) compute-sanitizer --tool racecheck --error-exitcode 86 "${KFILTER[@]}" \
    "$BIN/llama-perplexity" -m "${MODEL:-}" -f "${TEXT:-}" "${SAN_RUN[@]}" -ctk f16 -ctv f16 -fa on

step op-bandwidth 60 150 "$BIN/test-backend-ops" -- \
    "$PYTHON" scripts/bench/op_bandwidth.py --force --set backend=CUDA0 --set variant=cuda \
    --set "models=[llama3-8b,smollm2-135m]" --set "cells=[32768]" --set "output=$RESULTS/op_bandwidth_cuda.json"

step decode-overhead 90 200 "$BIN/llama-bench" -- \
    "$PYTHON" scripts/bench/decode_overhead.py --variant cuda --model-file "${BENCH_MODEL:-}" --depths 4096 16384 \
    --n-gen 256 --rounds 3 --threads 8 --out "$RESULTS/decode_overhead_cuda.json" --force --bench-args -ngl 99

finish
"$PYTHON" scripts/gpu/summary.py finish --results "$RESULTS" --out "$OUTDIR" --meta "$WORK/meta.json"
echo "verify: commit $SHORT, $(( $(date +%s) - T0 ))s; record $RESULTS/summary.json; returned files in $OUTDIR"
