#!/usr/bin/env bash
# Hypernetwork benchmark (see bench.py). The random-weight model (≈2.5 GB) is made once in the work folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
source Benchmarks/common.sh
"$venv/bin/python" Benchmarks/hyper/bench.py "$lidb" "${BENCH_DIR:-${TMPDIR:-/tmp}/lidb-bench-hyper}" --repeat "${BENCH_REPEAT:-3}" --rounds "${BENCH_ROUNDS:-2}"
