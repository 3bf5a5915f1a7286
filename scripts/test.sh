#!/usr/bin/env bash
# Builds and installs saekit's wheel (scripts/install.sh), installs the test extras, then runs
# the test suite against the installed package (never the source tree).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
"$PY" scripts/extra_requirements.py test > "${TMPDIR:-/tmp}/saekit-test-requirements.txt"
"$PY" -m pip install -q -r "${TMPDIR:-/tmp}/saekit-test-requirements.txt"
# When a toolkit was found the CUDA kernels must have been compiled: a test asserts it.
if [ -n "${CUDA_HOME:-}" ] && "$PY" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)"; then
  export SAEKIT_EXPECT_CUDA=1
fi
"$PY" -m saekit.info
"$PY" -m pytest tests -q -p no:cacheprovider "$@"
