#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Perplexity tables of the paper (SPEC.md §4), each from its experiment config in configs/experiments/:
#   table2  Table 2, PPL per model, c = 512          -> results/results_all.json
#   long    Table 4, long-context PPL (4096, 8192)   -> results/long_context_results.json
#   sinks   Table 5, sink ablation (SINK 0..256)     -> results/sink_ablation.json
#   all     the three, in that order
# Every table has the f16 baseline, ElasticKV rows and llama.cpp's quantized caches (q8_0 / q5_1 / q4_0) in the same run,
# -b = -ub = EVICT_EVERY, and KL divergence / top-1 agreement against the baseline's logits.
# Further arguments go to scripts/eval/ppl_tables.py (--set KEY=VALUE, --force; see its --help).
# An interrupted sweep resumes where it stopped; results made with other settings are refused without --force.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

usage() { sed -n '3,12p' "$0" | sed 's/^# \{0,1\}//'; echo "usage: $0 {table2|long|sinks|all} [ppl_tables.py options]"; }
[ $# -ge 1 ] || { usage >&2; exit 2; }
what=$1; shift
case "$what" in
  -h|--help) usage; exit 0 ;;
  table2) configs=(table2_ppl) ;;
  long)   configs=(table4_long_context) ;;
  sinks)  configs=(table5_sink_ablation) ;;
  all)    configs=(table2_ppl table4_long_context table5_sink_ablation) ;;
  *) echo "run_ppl.sh: unknown table '$what'; accepted: table2, long, sinks, all" >&2; exit 2 ;;
esac
for c in "${configs[@]}"; do
  "$PY" scripts/eval/ppl_tables.py --config "$c" "$@"
done
