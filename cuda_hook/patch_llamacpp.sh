#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Applies the ElasticKV hook to a llama.cpp tree, in place.
#
#   cuda_hook/patch_llamacpp.sh <llama.cpp dir>
#
# 1. The small edits to upstream files (cuda_hook/patches/*.patch, one per file) are checked first: each
#    must either apply exactly (no fuzz) or be applied already. If any fits neither way the tree is
#    refused and nothing is changed.
# 2. The pending edits are applied.
# 3. The hook's own sources (cuda_hook/tree/, mirroring llama.cpp paths) are copied in.
# Running it again on a patched tree changes nothing (it re-copies identical files).
set -euo pipefail

HOOK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=UPSTREAM
. "$HOOK_DIR/UPSTREAM"

die() { echo "patch_llamacpp: $*" >&2; exit 1; }

case "${1:-}" in
    -h|--help)
        sed -n '3,12p' "$0" | sed 's/^# \{0,1\}//'
        exit 0 ;;
    "") die "usage: $0 <llama.cpp dir> (e.g. build/llama.cpp; see --help)" ;;
esac
TREE=$1
[ -d "$TREE" ] || die "no such directory: $TREE"
[ -f "$TREE/src/llama-context.cpp" ] && [ -f "$TREE/ggml/include/ggml.h" ] ||
    die "$TREE is not a llama.cpp source tree (src/llama-context.cpp and ggml/include/ggml.h are missing)"
command -v patch >/dev/null || die "GNU patch is required (Debian: apt-get install patch)"

pending=()
n_applied=0
for p in "$HOOK_DIR"/patches/*.patch; do
    if patch -d "$TREE" -p1 --dry-run --reverse --force --fuzz=0 --silent < "$p" >/dev/null 2>&1; then
        n_applied=$((n_applied + 1))
    elif patch -d "$TREE" -p1 --dry-run --forward --force --fuzz=0 --silent < "$p" >/dev/null 2>&1; then
        pending+=("$p")
    else
        target=$(sed -n 's/^+++ b\/\([^[:space:]]*\).*/\1/p' "$p" | head -n 1)
        die "refusing $TREE: the edit $(basename "$p") does not fit $target, neither unapplied nor applied. \
The patch fits llama.cpp $LLAMACPP_COMMIT (PyPI $SDIST_PACKAGE==$SDIST_VERSION, vendor/llama.cpp); \
this tree is another version or was edited. Nothing was changed."
    fi
done

for p in "${pending[@]}"; do
    patch -d "$TREE" -p1 --forward --fuzz=0 --silent --no-backup-if-mismatch < "$p" ||
        die "applying $(basename "$p") failed after a clean dry run; the tree may be half patched"
done

(cd "$HOOK_DIR/tree" && find . -type f | sort) | while read -r f; do
    mkdir -p "$TREE/$(dirname "$f")"
    cmp -s "$HOOK_DIR/tree/$f" "$TREE/$f" || cp "$HOOK_DIR/tree/$f" "$TREE/$f"
done

echo "patch_llamacpp: $TREE: ${#pending[@]} edit(s) applied, $n_applied already present; hook sources in place"
