"""The compiled g-SAE score rounds like the reference: pre + (beta * relu(pre)) * |h| with the
product rounded before the add. Triton contracts a multiply feeding an add into one FMA by
default, which the interpreter (numpy) never does, so only the compiled code can show it: the
fused encoder is built for sm_90 without a GPU and its PTX read."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}

PTX_COUNTS = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from saekit.triton.compile_check import encoder_jobs

# bfloat16: the products run on tensor cores, so any fma.rn.f32 left would be the score's.
job = encoder_jobs("bfloat16", 64, gsae=True, aux=False, all_configs=False)[0]
src = ASTSource(fn=job.fn, signature=job.signature, constexprs=job.constexprs)
ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                     options={"num_warps": job.num_warps, "num_stages": job.num_stages}).asm["ptx"]
print(ptx.count("fma.rn.f32"), ptx.count("mul.rn.f32"))
"""


def test_gsae_score_product_is_rounded_before_the_add():
    proc = subprocess.run([sys.executable, "-c", PTX_COUNTS], env=ENV, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fma, mul_rn = map(int, proc.stdout.split()[-2:])
    assert fma == 0, f"{fma} fma.rn.f32 in the g-SAE kernel: the score's product was contracted"
    assert mul_rn > 0
