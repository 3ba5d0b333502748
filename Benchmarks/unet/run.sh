#!/usr/bin/env bash
# UNet benchmark (see bench.py). Uses the base benchmark's work folder (an SD 1.5-size pipeline).
set -euo pipefail
cd "$(dirname "$0")/../.."
source Benchmarks/common.sh
"$venv/bin/python" Benchmarks/unet/bench.py "$lidb" "${BENCH_DIR:-${TMPDIR:-/tmp}/lidb-bench-base}" --repeat "${BENCH_REPEAT:-3}"
