#!/usr/bin/env bash
# Builds and installs saekit (scripts/install.sh), then runs the main job on its embedded
# default: `saekit train` with no model trains a TopK SAE and a g-SAE side by side on a toy model
# of superposition, evaluates them and writes runs/toy/ (results.json, summary.png). Extra
# arguments go to `saekit train` (e.g. --fast, or --model DIR --hook MODULE --data FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
# The plot extra (matplotlib) draws runs/toy/summary.png.
"$PY" scripts/extra_requirements.py plot > "${TMPDIR:-/tmp}/saekit-plot-requirements.txt"
"$PY" -m pip install -q -r "${TMPDIR:-/tmp}/saekit-plot-requirements.txt"
"$PY" -m saekit train "$@"
