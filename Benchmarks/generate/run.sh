#!/usr/bin/env bash
# Generation benchmark (see bench.py): lidb against diffusers, 512×512, 20 steps. Uses the base
# benchmark's work folder; ~15 minutes on 2 cores (GEN_STEPS / GEN_SIZE shorten it).
set -euo pipefail
cd "$(dirname "$0")/../.."
source Benchmarks/common.sh
"$venv/bin/python" Benchmarks/generate/bench.py "$lidb" "${BENCH_DIR:-${TMPDIR:-/tmp}/lidb-bench-base}" \
    --steps "${GEN_STEPS:-20}" --size "${GEN_SIZE:-512}"
