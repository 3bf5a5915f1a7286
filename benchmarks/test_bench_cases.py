"""The cases of ``saekit bench`` under pytest-benchmark, one test per (case, contender):

    pytest benchmarks/test_bench_cases.py --benchmark-columns=median,iqr
    SAEKIT_BENCH_SHAPE=4096,768,24576,32 pytest benchmarks/test_bench_cases.py -k train_step

Each test first checks the contender's outputs against the dense baseline (as saekit bench
does) and skips, with the reason, a contender that is not installed or does not support the
case. Shape from SAEKIT_BENCH_SHAPE="N,d,M,k" (default 512,128,4096,16), dtype from
SAEKIT_BENCH_DTYPE (default float32 on CPU, bfloat16 on CUDA).
"""

import os

import pytest
import torch

from saekit.bench.contenders import DenseContender, Unsupported, Weights
from saekit.bench.grid import CASES, DTYPES, TOLERANCE, Inputs, Shape, _error, _run
from saekit.bench.run import contenders_for

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = os.environ.get("SAEKIT_BENCH_DTYPE", "bfloat16" if DEVICE.type == "cuda" else "float32")
SHAPE = Shape(*map(int, os.environ.get("SAEKIT_BENCH_SHAPE", "512,128,4096,16").split(",")), DTYPE)
CONTENDERS = [DenseContender()] + contenders_for(DEVICE, include_reference=True)


@pytest.fixture(scope="module")
def setting():
    w = Weights.random(SHAPE.d, SHAPE.M, SHAPE.k, DTYPES[DTYPE], DEVICE)
    inputs = Inputs(SHAPE, DEVICE, sets=3)
    baseline = DenseContender()
    baseline.setup(w)
    with torch.no_grad():
        inputs.codes = [tuple(baseline.encode(x)) for x in inputs.x]
    return w, inputs, baseline


@pytest.mark.parametrize("contender", CONTENDERS, ids=lambda c: c.name)
@pytest.mark.parametrize("case", CASES)
def test_case(benchmark, setting, case, contender):
    w, inputs, baseline = setting
    reason = contender.unavailable(DEVICE, DTYPES[DTYPE])
    if reason:
        pytest.skip(reason)
    contender.setup(w)
    try:
        err = _error(case, _run(contender, case, inputs.args(case, 0)), _run(baseline, case, inputs.args(case, 0)), SHAPE.M)
    except Unsupported as e:
        pytest.skip(str(e))
    assert err <= TOLERANCE[DTYPE], f"{contender.name} disagrees with the dense baseline: {err:.3g}"
    calls = iter(range(10**9))

    def run():
        out = _run(contender, case, inputs.args(case, next(calls)))
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    benchmark.extra_info.update(shape=SHAPE.label(), rel_error_vs_dense=err)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
