#!/usr/bin/env bash
# Every GPU check and benchmark in one short run (budgeted under 6 minutes on one H100/H200):
# GPU kernel tests, kernel benchmarks, training throughput against the best reference mode,
# the DALI GPU loader against the compiled MAE, and a short time-to-accuracy run. One JSON and
# one table: OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.md.
#   bash benchmarks/gpu_check.sh [--dry-run] [OUT_DIR]
# --dry-run runs every stage on the CPU at tiny sizes (CI does, so the script cannot rot).
# Needs the project installed (make install; on a GPU machine a CUDA build of torch). On a GPU
# machine that has torch and Triton but no network, carry wheels of zarr, numcodecs, donfig,
# google-crc32c, lenstronomy (`pip wheel` it: no wheel on PyPI), astropy, pyerfa,
# astropy-iers-data and pyxdg, install them with `pip install --no-deps --target DIR`, link
# kernels/ as DIR/lensperf_kernels and run with PYTHONPATH=DIR:<repo>. DALI is optional here.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=()
if [ "${1:-}" = "--dry-run" ]; then dry=(--dry-run); shift; fi
out="${1:-${OUT:-bench/gpu_check}}"
export PYTHONUNBUFFERED=1 LENSPERF_PROGRESS=0
unset TRITON_INTERPRET  # compiled kernels, not the interpreter
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
python3 -m lensperf.bench.gpu_check "${dry[@]}" --out "$out"
status=$?
cat "$out/gpu_check.md"
exit $status
