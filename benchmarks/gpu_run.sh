#!/usr/bin/env bash
# One call on a lent GPU machine (the device tool): build saekit's wheel against the machine's
# torch, install it, run the whole test suite against the installed wheel (GPU cases included),
# then the GPU benchmarks (bench_gpu.py: the issue 3/4 ratios; saekit bench: the grid against
# the dense baseline and the peers that are installed). Everything lands under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SAEKIT_RESULTS_DIR="$OUT"
if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda /usr/local/cuda-*; do [ -x "$c/bin/nvcc" ] && CUDA_HOME=$c && break; done
fi
export CUDA_HOME TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0a"} MAX_JOBS=${MAX_JOBS:-16}
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; date -u; } > "$OUT/env.txt" 2>&1
rm -f dist/saekit-*.whl
{ python3 -m pip wheel --no-build-isolation --no-deps -w dist . && python3 -m pip install --no-deps --force-reinstall dist/saekit-*.whl; } > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
cp dist/saekit-*.whl "$OUT/" 2>/dev/null || true
python3 -m saekit.info | tee "$OUT/info.txt"
SAEKIT_EXPECT_INSTALLED=1 timeout 240 python3 -m pytest tests -q -p no:cacheprovider --durations=15 2>&1 | tee "$OUT/tests.log" | tail -40
timeout 120 python3 benchmarks/bench_gpu.py 2>&1 | tee "$OUT/bench_gpu.log" | tail -20
timeout 200 python3 -m saekit.bench --out "$OUT" 2>&1 | tee "$OUT/saekit_bench.log" | tail -60
