#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool), inside its per-call limit: build saekit's
# wheel against the machine's torch and install it, then, most important first, the GPU tests
# (CUDA cases and the Triton suite, compiled), the issue 3/4 ratios (bench_gpu.py), the saekit
# bench grid against the dense baseline and the installed peers, and the rest of the suite with
# whatever time is left. Each stage gets min(its cap, the time left). Logs and reports are written
# to $RESULTS and packed into $OUT/results.tgz after every stage (the device tool brings back at
# most 8 files from $OUT), with $OUT/summary.txt beside it, so a run cut short still leaves the
# stages that ended.
#
#   OUT=/some/dir bash benchmarks/gpu_run.sh        # SAEKIT_GPU_BUDGET_S: whole-script seconds
#
# Run benchmarks/peer_wheels.sh here first and carry .whl so that sparsify is timed too; the
# device tool's call is then: command "bash benchmarks/gpu_run.sh", carry [".whl"], timeout_s 590.
# Unpack what comes back into benchmarks/results/gpu_<date>/ and commit it (env.txt names device,
# torch, CUDA).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
RESULTS=${SAEKIT_GPU_RESULTS:-/tmp/saekit_gpu_results}
rm -rf "$RESULTS"
mkdir -p "$OUT" "$RESULTS"
BUDGET=${SAEKIT_GPU_BUDGET_S:-540}
START=$SECONDS
export PYTHONUNBUFFERED=1 SAEKIT_RESULTS_DIR="$RESULTS" SAEKIT_EXPECT_INSTALLED=1
if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda /usr/local/cuda-*; do [ -x "$c/bin/nvcc" ] && CUDA_HOME=$c && break; done
fi
# Only the lent GPU's architecture (sm_90a on Hopper): half the compile time of the default pair.
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$(python3 -c "import torch; a = '%d.%d' % torch.cuda.get_device_capability(); print(a + 'a' if a == '9.0' else a)" 2>/dev/null || echo "8.0;9.0a")
fi
export CUDA_HOME TORCH_CUDA_ARCH_LIST MAX_JOBS=${MAX_JOBS:-16}

pack() {
  cp "$RESULTS/summary.txt" "$OUT/summary.txt" 2>/dev/null
  tar -czf "$OUT/results.tgz" -C "$RESULTS" .
}

# stage NAME CAP COMMAND...: runs COMMAND for at most min(CAP, time left - 10) seconds into
# $RESULTS/NAME.log, records its exit status in $RESULTS/summary.txt and packs $RESULTS into $OUT.
stage() {
  local name=$1 cap=$2
  shift 2
  local t=$((BUDGET - (SECONDS - START) - 10))
  if ((t < 20)); then
    echo "$name: skipped, budget spent" | tee -a "$RESULTS/summary.txt"
    return 1
  fi
  ((t > cap)) && t=$cap
  timeout "$t" "$@" >"$RESULTS/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc (limit ${t}s) at $((SECONDS - START))s" | tee -a "$RESULTS/summary.txt"
  tail -n 30 "$RESULTS/$name.log"
  pack
  return $rc
}

{
  nvidia-smi
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  date -u
  git log -1 --format='commit %h %s' 2>/dev/null
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
} >"$RESULTS/env.txt" 2>&1
if [ -d .whl ]; then  # peers' wheels carried from benchmarks/peer_wheels.sh
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site
fi
rm -f dist/saekit-*.whl
build() {
  python3 -m pip wheel --no-build-isolation --no-deps -w dist . &&
    python3 -m pip install --no-deps --force-reinstall dist/saekit-*.whl && python3 -m saekit.info
}
export -f build
stage build 300 bash -c build || exit 1
# -v: one line per test as it ends, so a stage cut short by its cap still shows what passed.
# pytest-xdist (in the GPU image): 8 processes share the GPU and compile Triton kernels in parallel.
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
stage gpu_tests 150 python3 -m pytest tests -v -p no:cacheprovider -m gpu -rfE --durations=10 $XDIST
stage triton_tests 120 python3 -m pytest tests/triton -v -p no:cacheprovider -rfE --durations=10 $XDIST
stage bench_gpu 120 python3 benchmarks/bench_gpu.py
stage saekit_bench 150 python3 -m saekit.bench --out "$RESULTS"
stage other_tests 240 python3 -m pytest tests -q -p no:cacheprovider -m "not gpu" --ignore=tests/triton -rfE $XDIST
echo "total $((SECONDS - START))s" | tee -a "$RESULTS/summary.txt"
pack
