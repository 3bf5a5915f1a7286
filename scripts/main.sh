#!/usr/bin/env bash
# Installs and builds saekit (scripts/install.sh), then runs the main job on its embedded
# default: the CPU benchmark at N=4096, d=768, M=24576, k=32 (pass --quick for a small shape).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
"${PYTHON:-python3}" benchmarks/bench_cpu.py "$@"
