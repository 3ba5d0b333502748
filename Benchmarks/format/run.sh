#!/usr/bin/env bash
# Format benchmark: lidb convert vs safetensors.torch (with and without fsync) and safetensors.numpy
# on a 1,000-tensor, ~2.1 GB file; warm and, as root, cold page cache.
# Needs the pinned Python venv (converters/setup_venv.sh) and ~8 GB of free disk in BENCH_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
source Benchmarks/common.sh
"$venv/bin/python" Benchmarks/format/bench.py "$lidb" "${BENCH_DIR:-${TMPDIR:-/tmp}/lidb-bench}" --repeat "${BENCH_REPEAT:-5}" --cold-repeat "${BENCH_COLD_REPEAT:-3}"
