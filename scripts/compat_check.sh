#!/usr/bin/env bash
# saekit against the oldest releases it supports, the GPU machines' torch 2.11 (CUDA 13.0) and
# Triton 3.6, without a GPU: builds the wheel with its CUDA kernels against that torch, compiles
# every Triton kernel for sm_90 with that Triton, and runs the CPU test suite. CI tests torch
# 2.14.1 only; run this before a GPU run or after touching torch or Triton APIs (about 10
# minutes and 5 GB, most of it the download of torch on the first run).
#
#   bash scripts/compat_check.sh            # venv in ${COMPAT_VENV:-/tmp/saekit-compat}
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${COMPAT_VENV:-/tmp/saekit-compat}
TORCH=${COMPAT_TORCH:-2.11.0}
TRITON=${COMPAT_TRITON:-3.6.0}
if [ -z "${CUDA_HOME:-}" ]; then
  for c in /usr/local/cuda /usr/local/cuda-*; do [ -x "$c/bin/nvcc" ] && CUDA_HOME=$c && break; done
fi
export CUDA_HOME TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=${MAX_JOBS:-2}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY=$VENV/bin/python
# numpy < 2.4: Triton 3.6's interpreter fails on runtime loop bounds with numpy 2.4 (triton#9171).
"$PY" -m pip install -q "torch==$TORCH" "triton==$TRITON" "numpy<2.4" scikit-build-core pybind11 cmake ninja \
  $(python3 scripts/extra_requirements.py test)
rm -rf /tmp/saekit-compat-dist
"$PY" -m pip wheel -q --no-build-isolation --no-deps -C build-dir=/tmp/saekit-compat-build \
  -w /tmp/saekit-compat-dist .
"$PY" -m pip install -q --no-deps --force-reinstall /tmp/saekit-compat-dist/saekit-*.whl
(cd /tmp && "$PY" -m saekit.info && "$PY" -m saekit.triton.compile_check --arch 90 --quick)
SAEKIT_EXPECT_INSTALLED=1 SAEKIT_EXPECT_CUDA=1 "$PY" -m pytest tests -q -p no:cacheprovider "$@"
