#!/usr/bin/env bash
# Every GPU check and benchmark in one run (under 8 minutes on an H100): the GPU tests, the
# kernel micro-benchmarks, and `lensperf bench --quick` (training throughput per mode, the plain
# reference MAE, FLOPs vs peak, loaders). One table out, plus the bench's results.md.
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# Needs a CUDA machine with the project installed (make install; or pip install -e ".[dev]").
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-bench}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 LENSPERF_PROGRESS=0
unset TRITON_INTERPRET  # compiled kernels, not the interpreter

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$out/gpu.txt"

echo "== GPU tests"
TRITON_INTERPRET=0 timeout 110 python3 -m pytest -q -m gpu tests -p no:cacheprovider \
  -o addopts="" 2>&1 | tee "$out/gpu_tests.log" | tail -5
tests_status=${PIPESTATUS[0]}

echo "== kernel benchmarks"
timeout 200 python3 -m pytest -q benchmarks/bench_masking.py benchmarks/bench_attention.py \
  --benchmark-only --benchmark-max-time=0.1 --benchmark-min-rounds=5 \
  --benchmark-json="$out/kernels.json" -p no:cacheprovider -o addopts="" > "$out/bench.log" 2>&1
bench_status=$?
tail -3 "$out/bench.log"

echo "== training throughput (lensperf bench --quick)"
timeout 150 python3 -m lensperf bench --quick --out "$out/train_bench" > "$out/train_bench.log" 2>&1
train_status=$?
tail -25 "$out/train_bench.log"

echo "== summary (first provider vs the others; Triton first where it ran)"
python3 benchmarks/summarize.py "$out/kernels.json" | tee "$out/summary.md"
echo "gpu tests exit $tests_status, kernel benchmarks exit $bench_status, bench exit $train_status"
exit $(( tests_status || bench_status || train_status ))
