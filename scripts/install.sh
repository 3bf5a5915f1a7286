#!/usr/bin/env bash
# Builds saekit's wheel against the installed torch and installs it (or, with SAEKIT_EDITABLE=1,
# an editable install for development). Idempotent; used by scripts/main.sh, scripts/test.sh and
# .ci/run. Torch is installed only when none is present (2.14.1 here, a CUDA 13.0 build; any
# torch >= 2.11 works, and the wheel is then built for that torch release).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.14.1"
fi
"$PY" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja

# The CUDA kernels compile whenever torch is a CUDA build and a toolkit is found. `nvcc` on
# PATH may be a wrapper script: CUDA_HOME must be the real toolkit root it points at.
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null 2>&1; then
  nvcc_path=$(command -v nvcc)
  real=$(grep -o '/[^" ]*/bin/nvcc' "$nvcc_path" 2>/dev/null | head -n 1 || true)
  [ -n "$real" ] || real=$(readlink -f "$nvcc_path")
  CUDA_HOME=$(dirname "$(dirname "$real")")
fi
if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
  export CUDA_HOME
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0a"}
  echo "saekit: building with CUDA from $CUDA_HOME for $TORCH_CUDA_ARCH_LIST"
else
  echo "saekit: no CUDA toolkit found, building CPU-only"
fi

if [ -n "${SAEKIT_EDITABLE:-}" ]; then
  "$PY" -m pip install -q --no-build-isolation -e .
else
  rm -f dist/saekit-*.whl
  "$PY" -m pip wheel -q --no-build-isolation --no-deps -w dist .
  wheel=$(ls dist/saekit-*.whl)
  "$PY" -m pip install -q "$wheel"                                      # its dependencies
  "$PY" -m pip install -q --no-deps --force-reinstall "$wheel"          # this build, always
  echo "saekit: installed $wheel"
fi
"$PY" -c "import saekit, saekit._extension as e; print('saekit', saekit.__version__, 'from', saekit.__file__, e.BUILD_INFO)"
