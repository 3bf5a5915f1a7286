#!/usr/bin/env bash
# Run here (with a package registry) before a GPU run: downloads into .whl/ the wheels that
# EleutherAI sparsify needs and the GPU machine's image lacks (Python 3.12, no registry there),
# so that `saekit bench` can time sparsify on the GPU. Pass `carry: [".whl"]` to the device
# tool's run; benchmarks/gpu_run.sh installs them into /tmp/site. SAELens is left out: its
# transformer-lens dependency tree is too large to carry; the bench reports it as not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  eai-sparsify==1.3.3 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 natsort==8.4.0 schedulefree==1.4.1 \
  simple-parsing==0.1.9 docstring-parser==0.18.0
ls .whl
