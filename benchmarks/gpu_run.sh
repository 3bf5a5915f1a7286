#!/usr/bin/env bash
# One call on a lent GPU machine: build against its torch, run the whole test suite (GPU cases
# included), run the GPU benchmark; everything lands under $OUT (default ./out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SAEKIT_RESULTS_DIR="$OUT"
if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda /usr/local/cuda-*; do [ -x "$c/bin/nvcc" ] && CUDA_HOME=$c && break; done
fi
export CUDA_HOME TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"9.0a"}
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; date -u; } > "$OUT/env.txt" 2>&1
python3 -m pip install -q --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
python3 -m pytest tests -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -30
python3 benchmarks/bench_gpu.py 2>&1 | tee "$OUT/bench_gpu.log"
