#!/usr/bin/env bash
# oneDNN vs OpenBLAS kernel benchmark on Stable Diffusion 1.5 UNet shapes (512x512, batch 2):
# gemm (f32 OpenBLAS, f32/bf16 oneDNN matmul) and 3x3 conv (im2col+OpenBLAS, oneDNN f32/bf16).
# Needs Debian's libdnnl-dev (2.6.x) and libopenblas-dev. No lidb build needed.
#   Benchmarks/kernels/run.sh [--quick] [N=5] [summary.json]
# Env: BENCH_THREADS (both libraries, default 2), BENCH_ALLOW_REF=1 (time oneDNN reference impls),
#      ONEDNN_VERBOSE=1 (oneDNN's own per-primitive log).
# The full run allocates ~3.5 GB (attention shapes) and does ~3 TFLOP at N=5 (roughly a minute on 2 cores).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${BENCH_BUILD_DIR:-${TMPDIR:-/tmp}/lidb-kernels}"
mkdir -p "$out"
gcc -O2 -march=native -std=c11 -Wall -Wextra -o "$out/onednn_shapes" "$here/onednn_shapes.c" \
    -ldnnl -lopenblas -lm
threads="${BENCH_THREADS:-2}"
export OMP_NUM_THREADS="$threads" BENCH_THREADS="$threads"
exec "$out/onednn_shapes" "$@"
