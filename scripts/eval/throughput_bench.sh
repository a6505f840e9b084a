#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Table 6: throughput and decode overhead of ElasticKV with llama-bench (-o jsonl): the hook off, full mode at
# EVICT_EVERY 16/64/256 and incremental mode, interleaved in one run, at the depths of
# configs/experiments/table6_throughput.yaml; overhead as ratios to the hook-off runs of the same rounds.
# Arguments go to scripts/eval/throughput_tables.py (--config, --set KEY=VALUE, --force; see its --help).
# Example on a GPU build: scripts/eval/throughput_bench.sh --set variant=cuda --set 'bench_args=[-ngl, "99"]'
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" scripts/eval/throughput_tables.py "$@"
