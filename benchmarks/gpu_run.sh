#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool), inside its per-call limit: build saekit's
# wheel against the machine's torch and install it, then, most important first: the large-shape
# and chunked-encoder GPU tests, the issue 3/4 ratios (bench_gpu.py), the saekit bench grid
# against the dense baseline and the installed peers (the issues' shapes first), the other GPU
# tests (CUDA cases and the Triton suite, compiled) and the rest of the suite. Each stage gets
# min(its cap, the time left). Logs and reports are written to $RESULTS and packed into
# $OUT/results.tgz after every stage (the device tool brings back at most 8 files from $OUT), with
# $OUT/summary.txt beside it, so a run cut short still leaves the stages that ended.
#
#   OUT=/some/dir bash benchmarks/gpu_run.sh        # SAEKIT_GPU_BUDGET_S: whole-script seconds
#
# SAEKIT_GPU_STAGES picks stages (default: all, in this order): build key_tests bench_gpu
# saekit_bench gpu_tests triton_tests other_tests. A second call on the still-warm machine can
# run what the first had no time for, without "build". SAEKIT_COMMIT names the commit in the
# results (the machine's copy of the tree has no git).
#
# Run benchmarks/peer_wheels.sh here first and carry .whl so that sparsify is timed too; the
# device tool's call is then: command "SAEKIT_GPU_BUDGET_S=500 SAEKIT_COMMIT=<hash> bash
# benchmarks/gpu_run.sh", carry [".whl"], timeout_s 560. Unpack what comes back into
# benchmarks/results/gpu_<date>/ and commit it (env.txt names device, torch, CUDA).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
RESULTS=${SAEKIT_GPU_RESULTS:-/tmp/saekit_gpu_results}
rm -rf "$RESULTS"
mkdir -p "$OUT" "$RESULTS"
BUDGET=${SAEKIT_GPU_BUDGET_S:-540}
START=$SECONDS
STAGES=" ${SAEKIT_GPU_STAGES:-build key_tests bench_gpu saekit_bench gpu_tests triton_tests other_tests} "
# SAEKIT_EXPECT_CUDA: a build that dropped the CUDA kernels fails the tests instead of skipping them.
export PYTHONUNBUFFERED=1 SAEKIT_RESULTS_DIR="$RESULTS" SAEKIT_EXPECT_INSTALLED=1 SAEKIT_EXPECT_CUDA=1
if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda /usr/local/cuda-*; do [ -x "$c/bin/nvcc" ] && CUDA_HOME=$c && break; done
fi
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then  # e.g. a pip-installed toolkit
  CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
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
  timeout -k 10 "$t" "$@" >"$RESULTS/$name.log" 2>&1
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
  git log -1 --format='commit %h %s' 2>/dev/null || echo "commit ${SAEKIT_COMMIT:-unknown}"
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST CUDA_HOME=${CUDA_HOME:-none} nvcc=$(command -v nvcc)"
  cmake --version | head -1
  python3 -m pip list 2>/dev/null | grep -iE "^(pyarrow|fsspec|scikit-build-core|pybind11|ninja|pytest-xdist|numpy) "
} >"$RESULTS/env.txt" 2>&1
if [ -d .whl ]; then  # peers' wheels carried from benchmarks/peer_wheels.sh
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site
fi
want() { [[ $STAGES == *" $1 "* ]]; }
build() {
  rm -f dist/saekit-*.whl
  python3 -m pip wheel --no-build-isolation --no-deps -w dist . &&
    python3 -m pip install --no-deps --force-reinstall dist/saekit-*.whl && python3 -m saekit.info &&
    (cd /tmp && python3 -c "from saekit._extension import BUILD_INFO as b; assert b['with_cuda'], b; print(b)")
}
export -f build
if want build; then stage build 300 bash -c build || exit 1; fi
# -v: one line per test as it ends, so a stage cut short by its cap still shows what passed.
# pytest-xdist (in the GPU image): 8 processes share the GPU and compile Triton kernels in
# parallel; the large-shape tests (tens of GiB each for the reference) run first, alone.
XDIST=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
KEY="tests/ops/test_gpu_large.py tests/ops/test_cuda_encode_chunks.py"
IGNORE_KEY=$(for f in $KEY; do printf -- '--ignore=%s ' "$f"; done)
if want key_tests; then stage key_tests 100 python3 -m pytest $KEY -v -p no:cacheprovider -rfE --durations=10; fi
if want bench_gpu; then stage bench_gpu 120 python3 benchmarks/bench_gpu.py; fi
if want saekit_bench; then stage saekit_bench 150 python3 -m saekit.bench --out "$RESULTS"; fi
if want gpu_tests; then
  stage gpu_tests 150 python3 -m pytest tests -v -p no:cacheprovider -m gpu $IGNORE_KEY -rfE --durations=10 $XDIST
fi
if want triton_tests; then
  stage triton_tests 120 python3 -m pytest tests/triton -v -p no:cacheprovider -rfE --durations=10 $XDIST
fi
if want other_tests; then
  stage other_tests 240 python3 -m pytest tests -q -p no:cacheprovider -m "not gpu" --ignore=tests/triton -rfE $XDIST
fi
echo "total $((SECONDS - START))s" | tee -a "$RESULTS/summary.txt"
pack
