#!/usr/bin/env bash
# Installs and builds saekit (scripts/install.sh), then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
# When a toolkit was found the CUDA kernels must have been compiled: a test asserts it.
if [ -n "${CUDA_HOME:-}" ] && "${PYTHON:-python3}" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)"; then
  export SAEKIT_EXPECT_CUDA=1
fi
"${PYTHON:-python3}" -m pytest tests -q -p no:cacheprovider "$@"
