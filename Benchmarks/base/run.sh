#!/usr/bin/env bash
# Base benchmark (see bench.py). Needs the pinned Python venv and ~20 GB free in BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
source Benchmarks/common.sh
"$venv/bin/python" Benchmarks/base/bench.py "$lidb" "${BENCH_DIR:-${TMPDIR:-/tmp}/lidb-bench-base}" --repeat "${BENCH_REPEAT:-3}"
