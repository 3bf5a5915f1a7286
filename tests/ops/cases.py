"""Inputs for the op tests and the oracle comparison every test uses.

`grid` data holds small multiples of 1/4, so every product and sum is exact in float32 (and
every input exact in bfloat16/float16): selections cannot depend on summation order, ties are
plentiful, and a float64 computation selects exactly the same latents.
"""

from __future__ import annotations

import os

import pytest
import torch

from saekit.ops import reference

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (device, backend) pairs every op test runs; the CUDA ones only where a GPU is present.
DEVICES_BACKENDS = (
    ("cpu", "cpu"),
    pytest.param("cuda", "cuda", marks=pytest.mark.gpu),
    pytest.param("cuda", "triton", marks=pytest.mark.gpu),
)
# Those and the triton backend on CPU tensors, in Triton's interpreter (where no GPU is present:
# tests/conftest.py sets TRITON_INTERPRET=1), for the tests that have no twin in tests/triton.
# Tests using it call require() first.
WITH_TRITON_CPU = DEVICES_BACKENDS + (("cpu", "triton"),)


def shape_id(shape):
    """Readable test id of an (N, d, M, k) case."""
    return "N{}-d{}-M{}-k{}".format(*shape)


def interpreter_expected() -> bool:
    """CI sets SAEKIT_EXPECT_TRITON_INTERPRETER=1: there, Triton's interpreter missing (an old
    Triton, or triton imported before TRITON_INTERPRET=1) fails the run instead of skipping."""
    return os.environ.get("SAEKIT_EXPECT_TRITON_INTERPRETER") == "1"


def require(backend, op, device, dtype):
    """Skip when backend declares that it cannot run op for device and dtype (fail, where the
    interpreter is expected, if the reason is that Triton's interpreter cannot run at all)."""
    from saekit.ops import dispatch

    reason = dispatch.supports(backend, op, torch.device(device), dtype)
    if reason is None:
        return
    if backend == "triton" and device == "cpu" and interpreter_expected() \
            and dispatch.supports("triton", op, torch.device("cpu")) is not None:
        pytest.fail(f"SAEKIT_EXPECT_TRITON_INTERPRETER=1 but {reason}")
    pytest.skip(reason)


def grid(shape, generator, low=-8, high=8, device="cpu"):
    """Multiples of 1/4 in [low/4, high/4], float64 (cast by the caller)."""
    return torch.randint(low, high + 1, shape, generator=generator, dtype=torch.float64).div_(4).to(device)


def encoder_inputs(N, d, M, dtype, seed=0, data="grid", device="cpu"):
    """(x [N, d], W_enc [M, d], b_enc [M], b_dec [d]) in dtype."""
    g = torch.Generator().manual_seed(seed)
    if data == "grid":
        x, W, be, bd = grid((N, d), g), grid((M, d), g), grid((M,), g), grid((d,), g)
    else:
        x, W = torch.randn(N, d, generator=g, dtype=torch.float64), torch.randn(M, d, generator=g, dtype=torch.float64)
        be, bd = torch.randn(M, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
        W /= d**0.5
    return tuple(t.to(device=device, dtype=dtype) for t in (x, W, be, bd))


def leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def grads(outputs, inputs, upstream):
    """Gradients of sum(out * up) over the given outputs with respect to inputs (None -> 0)."""
    total = sum((o.float() * u.float()).sum() for o, u in zip(outputs, upstream))
    gs = torch.autograd.grad(total, inputs, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for g, i in zip(gs, inputs)]


def assert_close_to_oracle(out, low_precision_ref, oracle, name, rel=1e-5):
    """flash-attention's rule: out's error against the float64 oracle is at most twice that of
    the reference computed in the same dtype, plus a float32 rounding allowance."""
    out, lp, o = out.double(), low_precision_ref.double(), oracle.double()
    assert out.shape == o.shape, f"{name}: shape {tuple(out.shape)} != {tuple(o.shape)}"
    if o.numel() == 0:
        return
    scale = o.abs().max().item() + 1.0
    err = (out - o).abs().max().item()
    base = (lp - o).abs().max().item()
    assert err <= 2 * base + rel * scale, f"{name}: error {err:.3g} > 2 * {base:.3g} + {rel * scale:.3g}"


def reference_encoder_oracle(x, W, be, bd, k, **kw):
    """The reference backend on float64 copies: the oracle for values and gradients."""
    return reference.topk_encode(*(t.double() for t in (x, W, be, bd)), k, **kw)


def far_gradient_case(power, N=24, d=16, M=200, seed=3, device="cpu", dtype=torch.float16):
    """g-SAE inputs whose gradient is grid data times 2**power (beyond float16's range for
    power = 20, below its smallest subnormal for power = -30), with beta = 2**-power, so that
    the gradient term is as large as for an unscaled gradient and every product stays exact:
    (x, grad [float32], W_enc, b_enc, W_dec, b_dec), beta."""
    x, W, be, bd = encoder_inputs(N, d, M, dtype, seed=seed, device=device)
    g = torch.Generator().manual_seed(seed + 1)
    grad = (grid((N, d), g) * 2.0**power).to(device, torch.float32)
    W_dec = grid((M, d), g).to(device, dtype)
    return (x, grad, W, be, W_dec, bd), 2.0**-power


def limit_gradient_case(device="cpu"):
    """far_gradient_case(0) (float16, N=8) with gradient rows whose largest entry is 2**127
    (row 0, alone in it), inf (row 1, beside 2**20: beyond float16, so the row scale must come
    from the finite entries), NaN (row 2) or zero (row 3): the power-of-two row scales of the
    float16 g operand must stay finite. Returns (x, grad, W_enc, b_enc, W_dec, b_dec)."""
    args, _ = far_gradient_case(0, N=8, device=device)
    grad = args[1].clone()
    grad[0] = 0.0
    grad[0, 3] = 2.0**127
    grad[1, 5] = float("inf")
    grad[1, 2] = 2.0**20
    grad[2, 7] = float("nan")
    grad[3] = 0.0
    return (args[0], grad, *args[2:])
