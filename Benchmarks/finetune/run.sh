#!/usr/bin/env bash
# Training-step benchmark (see bench.py). Uses the base benchmark's work folder (an SD 1.5-size pipeline).
set -euo pipefail
cd "$(dirname "$0")/../.."
source Benchmarks/common.sh
"$venv/bin/python" Benchmarks/finetune/bench.py "$lidb" "${BENCH_DIR:-${TMPDIR:-/tmp}/lidb-bench-base}" \
    --steps "${BENCH_STEPS:-3}" --resolutions "${BENCH_RESOLUTIONS:-256,512}" --precisions "${BENCH_PRECISIONS:-f32,bf16}" --weights "${BENCH_WEIGHTS:-f32,f16-per-layer}"
