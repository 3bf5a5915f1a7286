#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool), inside its per-call limit: build saekit's
# wheel against the machine's torch and install it, then, most important first, the GPU tests
# (CUDA cases and the Triton suite, compiled), the issue 3/4 ratios (bench_gpu.py), the saekit
# bench grid against the dense baseline and the installed peers, and the rest of the suite with
# whatever time is left. Each stage gets min(its cap, the time left); everything lands under $OUT
# as it goes, so a stage cut short still leaves the earlier ones.
#
#   OUT=/some/dir bash benchmarks/gpu_run.sh        # SAEKIT_GPU_BUDGET_S: whole-script seconds
#
# Run benchmarks/peer_wheels.sh here first and carry .whl so that sparsify is timed too; the
# device tool's call is then: command "bash benchmarks/gpu_run.sh", carry [".whl"], timeout_s 590.
# Commit what comes back under benchmarks/results/gpu_<date>/ (env.txt names device, torch, CUDA).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
BUDGET=${SAEKIT_GPU_BUDGET_S:-540}
START=$SECONDS
export PYTHONUNBUFFERED=1 SAEKIT_RESULTS_DIR="$OUT" SAEKIT_EXPECT_INSTALLED=1
if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda /usr/local/cuda-*; do [ -x "$c/bin/nvcc" ] && CUDA_HOME=$c && break; done
fi
export CUDA_HOME TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0a"} MAX_JOBS=${MAX_JOBS:-16}

# stage NAME CAP COMMAND...: runs COMMAND for at most min(CAP, time left - 10) seconds into
# $OUT/NAME.log and records its exit status in $OUT/summary.txt.
stage() {
  local name=$1 cap=$2
  shift 2
  local t=$((BUDGET - (SECONDS - START) - 10))
  if ((t < 20)); then
    echo "$name: skipped, budget spent" | tee -a "$OUT/summary.txt"
    return 1
  fi
  ((t > cap)) && t=$cap
  timeout "$t" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc (limit ${t}s) at $((SECONDS - START))s" | tee -a "$OUT/summary.txt"
  tail -n 30 "$OUT/$name.log"
  return $rc
}

{
  nvidia-smi
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  date -u
  git log -1 --format='commit %h %s' 2>/dev/null
} >"$OUT/env.txt" 2>&1
if [ -d .whl ]; then  # peers' wheels carried from benchmarks/peer_wheels.sh
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site
fi
rm -f dist/saekit-*.whl
build() {
  python3 -m pip wheel --no-build-isolation --no-deps -w dist . &&
    python3 -m pip install --no-deps --force-reinstall dist/saekit-*.whl &&
    cp dist/saekit-*.whl "$OUT/" && python3 -m saekit.info
}
export -f build
export OUT
stage build 300 bash -c build || exit 1
# -v: one line per test as it ends, so a stage cut short by its cap still shows what passed.
stage gpu_tests 150 python3 -m pytest tests -v -p no:cacheprovider -m gpu -rfE --durations=10
stage triton_tests 120 python3 -m pytest tests/triton -v -p no:cacheprovider -rfE --durations=10
stage bench_gpu 120 python3 benchmarks/bench_gpu.py
stage saekit_bench 150 python3 -m saekit.bench --out "$OUT"
stage other_tests 240 python3 -m pytest tests -q -p no:cacheprovider -m "not gpu" --ignore=tests/triton -rfE
echo "total $((SECONDS - START))s" | tee -a "$OUT/summary.txt"
