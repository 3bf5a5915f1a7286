import pytest
import torch

from saekit.ops import gradient_topk_encode, reference, topk_encode
from tests.ops.cases import (
    shape_id,
    DEVICES_BACKENDS,
    WITH_TRITON_CPU,
    DTYPES,
    assert_close_to_oracle,
    encoder_inputs,
    far_gradient_case,
    limit_gradient_case,
    grads,
    grid,
    leaves,
    require,
)

SHAPES = [(33, 16, 40, 5), (7, 8, 13, 13), (5, 4, 9, 1), (0, 8, 16, 4), (19, 12, 2100, 17)]


def _grad_inputs(N, d, M, dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed + 100)
    return grid((N, d), g).to(device, dtype), grid((M, d), g).to(device, dtype)


def test_reference_score_by_hand():
    """The oracle's score against SPEC's formula written out element by element."""
    x, W, be, bd = encoder_inputs(4, 3, 6, torch.float64, data="gauss")
    grad, W_dec = torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    beta = 0.7
    _, idx = reference.gradient_topk_encode(x, grad, W, be, W_dec, bd, 6, beta)
    for n in range(4):
        score = []
        for i in range(6):
            pre = float((x[n] - bd) @ W[i] + be[i])
            h = float(grad[n] @ W_dec[i])
            score.append(max(pre, 0.0) * (1 + beta * abs(h)) if pre > 0 else pre)
        assert idx[n].tolist() == sorted(range(6), key=lambda i: (-score[i], i))


@pytest.mark.parametrize("device,backend", WITH_TRITON_CPU)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_matches_reference(device, backend, dtype, shape):
    require(backend, "gradient_topk_encode", device, dtype)
    N, d, M, k = shape
    inputs = encoder_inputs(N, d, M, dtype, seed=N + M, device=device)
    grad, W_dec = _grad_inputs(N, d, M, dtype, N + M, device)
    mine, ref, ref64 = leaves(*inputs), leaves(*inputs), leaves(*(t.double() for t in inputs))

    def run(ins, backend, cast=None):
        x, W, be, bd = ins
        g, Wd = (grad, W_dec) if cast is None else (grad.to(cast), W_dec.to(cast))
        return gradient_topk_encode(x, g, W, be, Wd, bd, k, beta=0.5, backend=backend)

    out, expect, oracle = run(mine, backend), run(ref, "reference"), run(ref64, "reference", torch.float64)
    assert torch.equal(out.indices, expect.indices)
    assert torch.equal(out.indices, oracle.indices)
    assert torch.equal(out.values, expect.values)
    up = torch.randn(N, k, generator=torch.Generator().manual_seed(7)).to(device)
    for name, a, b, c in zip(("dx", "dW_enc", "db_enc", "db_dec"), grads([out.values], mine, [up]),
                             grads([expect.values], ref, [up]), grads([oracle.values], ref64, [up])):
        assert_close_to_oracle(a, b, c, name)


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_beta_zero_and_zero_grad_give_topk(device, backend, dtype):
    N, d, M, k = 40, 8, 50, 7
    x, W, be, bd = encoder_inputs(N, d, M, dtype, device=device)
    grad, W_dec = _grad_inputs(N, d, M, dtype, 0, device)
    plain = topk_encode(x, W, be, bd, k, backend=backend)
    for g, beta in ((grad, 0.0), (torch.zeros_like(grad), 3.0)):
        for norm in ("none", "token"):
            out = gradient_topk_encode(x, g, W, be, W_dec, bd, k, beta=beta, grad_norm=norm, backend=backend)
            assert torch.equal(out.indices, plain.indices)
            assert torch.equal(out.values, plain.values)


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
def test_gradient_changes_selection(device, backend):
    """A large beta must let a latent with a big downstream effect win: the test can fail."""
    N, d, M, k = 30, 8, 40, 4
    x, W, be, bd = encoder_inputs(N, d, M, torch.float32, device=device)
    grad, W_dec = _grad_inputs(N, d, M, torch.float32, 1, device)
    plain = topk_encode(x, W, be, bd, k, backend=backend)
    out = gradient_topk_encode(x, grad, W, be, W_dec, bd, k, beta=4.0, backend=backend)
    assert not torch.equal(out.indices, plain.indices)
    pre = reference.pre_activations(x, W, be, bd)
    assert torch.equal(out.values, torch.relu(pre.gather(1, out.indices)))


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
def test_token_norm_matches_reference(device, backend):
    x, W, be, bd = encoder_inputs(50, 32, 300, torch.float32, data="gauss", device=device)
    grad = torch.randn(50, 32, device=device) * 1e3
    grad[3] = 0
    W_dec = torch.randn(300, 32, device=device)
    out = gradient_topk_encode(x, grad, W, be, W_dec, bd, 10, beta=2.0, grad_norm="token", backend=backend)
    expect = gradient_topk_encode(x, grad, W, be, W_dec, bd, 10, beta=2.0, grad_norm="token", backend="reference")
    scaled = gradient_topk_encode(x, grad * 1e-3, W, be, W_dec, bd, 10, beta=2.0, grad_norm="token", backend=backend)
    assert torch.equal(out.indices, expect.indices)
    assert torch.equal(out.indices, scaled.indices)
    torch.testing.assert_close(out.values, expect.values)


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
def test_no_gradient_into_grad_or_decoder(device, backend):
    require(backend, "gradient_topk_encode", device, torch.float64)
    x, W, be, bd = leaves(*encoder_inputs(10, 6, 20, torch.float64, data="gauss", device=device))
    grad = torch.randn(10, 6, dtype=torch.float64, device=device, requires_grad=True)
    W_dec = torch.randn(20, 6, dtype=torch.float64, device=device, requires_grad=True)
    out = gradient_topk_encode(x, grad, W, be, W_dec, bd, 5, beta=1.5, backend=backend)
    out.values.sum().backward()
    assert grad.grad is None and W_dec.grad is None
    assert torch.autograd.gradcheck(
        lambda x_, W_, be_: gradient_topk_encode(x_, grad.detach(), W_, be_, W_dec, bd, 5, beta=1.5, backend=backend).values,
        (x.detach().requires_grad_(), W.detach().requires_grad_(), be.detach().requires_grad_()),
    )


@pytest.mark.parametrize("device,backend", WITH_TRITON_CPU)
def test_nan_scores_match_reference(device, backend):
    """NaN in pre (a NaN encoder row) or in h (a NaN decoder row) ranks first, as in TopK."""
    require(backend, "gradient_topk_encode", device, torch.float32)
    N, d, M, k = 9, 8, 30, 5
    x, W, be, bd = encoder_inputs(N, d, M, torch.float32, device=device)
    grad, W_dec = _grad_inputs(N, d, M, torch.float32, 2, device)
    W[4, 1] = float("nan")
    W_dec[17, 0] = float("nan")
    out = gradient_topk_encode(x, grad, W, be, W_dec, bd, k, beta=0.5, backend=backend)
    expect = gradient_topk_encode(x, grad, W, be, W_dec, bd, k, beta=0.5, backend="reference")
    assert out.indices[:, :2].tolist() == [[4, 17]] * N
    assert torch.equal(out.indices, expect.indices)
    torch.testing.assert_close(out.values, expect.values, equal_nan=True)


@pytest.mark.parametrize("device,backend", WITH_TRITON_CPU)
def test_float16_gradient_rows_at_float32_limits(device, backend):
    """Gradient rows whose largest entry is 2**127 (its power-of-two row scale must stay finite),
    inf (beside 2**20, which must not overflow float16), NaN or zero: selections as the
    reference's, h reaching inf on the 2**127 row."""
    require(backend, "gradient_topk_encode", device, torch.float16)
    args = limit_gradient_case(device)
    out = gradient_topk_encode(*args, 5, beta=2.0**-126, backend=backend)
    expect = gradient_topk_encode(*args, 5, beta=2.0**-126, backend="reference")
    assert torch.equal(out.indices, expect.indices)
    assert torch.equal(out.values, expect.values)


@pytest.mark.parametrize("device,backend", WITH_TRITON_CPU)
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_width_inputs(device, backend, dtype):
    """d = 0: every pre-activation is b_enc and the gradient term is zero."""
    require(backend, "gradient_topk_encode", device, dtype)
    x, W, be, bd = encoder_inputs(6, 0, 9, dtype, device=device)
    grad, W_dec = _grad_inputs(6, 0, 9, dtype, 0, device)
    out = gradient_topk_encode(x, grad, W, be, W_dec, bd, 4, beta=1.0, backend=backend)
    expect = gradient_topk_encode(x, grad, W, be, W_dec, bd, 4, beta=1.0, backend="reference")
    assert torch.equal(out.indices, expect.indices)
    assert torch.equal(out.values, expect.values)
    bias = be.float().tolist()
    best = sorted(range(9), key=lambda i: (-bias[i], i))[:4]
    assert out.indices.tolist() == [best] * 6


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
@pytest.mark.parametrize("power", [20, -30])
def test_float16_gradients_outside_float16_range(device, backend, power):
    """A float16 SAE with gradients beyond float16's range (loss scaling) or below its smallest
    subnormal: the backends that round g to float16 must neither overflow it nor flush it."""
    args, beta = far_gradient_case(power, device=device)
    k = 7
    out = gradient_topk_encode(*args, k, beta=beta, backend=backend)
    expect = gradient_topk_encode(*args, k, beta=beta, backend="reference")
    plain = topk_encode(args[0], args[2], args[3], args[5], k, backend="reference")
    assert not torch.equal(expect.indices, plain.indices)  # the gradient term decides here
    assert torch.equal(out.indices, expect.indices)
    assert torch.equal(out.values, expect.values)


def _l2_rows(g):
    """Each row of g divided by its Euclidean norm, written out; zero rows stay zero."""
    norms = [sum(float(v) ** 2 for v in row) ** 0.5 for row in g.double().cpu()]
    return torch.stack([row / n if n > 0 else row for row, n in zip(g.double().cpu(), norms)]).to(g)


def test_normalize_grad_is_the_l2_norm_of_each_row():
    g = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [1.0, -1.0, 7.0], [1e-3, 2e3, -5.0]])
    torch.testing.assert_close(reference.normalize_grad(g, "token"), _l2_rows(g), rtol=1e-6, atol=0)
    assert torch.equal(reference.normalize_grad(g, "none"), g)


@pytest.mark.parametrize("device,backend", WITH_TRITON_CPU + (("cpu", "reference"),))
def test_token_norm_selects_as_the_hand_normalised_gradient(device, backend):
    """grad_norm="token" equals grad_norm="none" on each row divided by its L2 norm (written out
    here, not taken from the reference); with rows of sizes from 1e-3 to 1e3, and a beta at which
    the gradient term and pre weigh alike, the L1 or max norm would select differently."""
    require(backend, "gradient_topk_encode", device, torch.float32)
    N, d, M, k, beta = 12, 8, 60, 6, 0.5
    x, W, be, bd = encoder_inputs(N, d, M, torch.float32, seed=5, device=device)
    g = torch.Generator().manual_seed(9)
    grad = grid((N, d), g) * torch.logspace(-3, 3, N, dtype=torch.float64)[:, None]
    grad[4] = 0
    grad = grad.to(device, torch.float32)
    W_dec = grid((M, d), g).to(device, torch.float32)

    def select(g, norm, backend):
        return gradient_topk_encode(x, g, W, be, W_dec, bd, k, beta=beta, grad_norm=norm, backend=backend)

    out, expect = select(grad, "token", backend), select(_l2_rows(grad), "none", "reference")
    for other in (grad.abs().sum(1, keepdim=True), grad.abs().amax(1, keepdim=True)):
        assert not torch.equal(select(grad / other.clamp_min(1e-30), "none", "reference").indices, expect.indices)
    assert torch.equal(out.indices, expect.indices)
    assert torch.equal(out.values, expect.values)


@pytest.mark.parametrize("device,backend", WITH_TRITON_CPU)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_with_fewer_than_k_positive(device, backend, dtype):
    """Rows with 3 positive pre-activations and k = 8: the gradient term only reorders the
    positive ones; the non-positive ones fill up by their plain pre-activation, as in TopK."""
    require(backend, "gradient_topk_encode", device, dtype)
    N, d, M, k = 10, 8, 30, 8
    x, W, be, bd = encoder_inputs(N, d, M, dtype, seed=1, device=device)
    be[3:] -= 40  # only latents 0..2 can be positive
    grad, W_dec = _grad_inputs(N, d, M, dtype, 3, device)
    out = gradient_topk_encode(x, grad, W, be, W_dec, bd, k, beta=4.0, backend=backend)
    expect = gradient_topk_encode(x, grad, W, be, W_dec, bd, k, beta=4.0, backend="reference")
    assert torch.equal(out.indices, expect.indices)
    assert torch.equal(out.values, expect.values)
    plain = topk_encode(x, W, be, bd, k, backend="reference")
    pre = reference.pre_activations(x.double(), W.double(), be.double(), bd.double())
    positive = (pre > 0).sum(1)
    assert positive.max() <= 3 and (out.values[:, 3:] == 0).all()
    for n in range(N):  # the tail (non-positive latents) in TopK's order
        p = int(positive[n])
        assert out.indices[n, p:].tolist() == plain.indices[n, p:].tolist()


@pytest.mark.parametrize("device,backend", [pytest.param("cuda", "cuda", marks=pytest.mark.gpu),
                                            pytest.param("cuda", "triton", marks=pytest.mark.gpu),
                                            ("cpu", "triton")])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("grad_norm", ["none", "token"])
def test_16_bit_inputs_round_g_to_their_dtype(device, backend, dtype, grad_norm):
    """The documented precision of the GPU backends (README, Precision): for 16-bit inputs the
    gradient, normalised first, is rounded to the input dtype (float16: after dividing each row
    by a power of two that brings its largest entry into [0.5, 1)) before the h product. With a
    float32 gradient off the grid this selects as the reference fed that rounded gradient, which
    here differs from the reference fed the gradient as it is."""
    require(backend, "gradient_topk_encode", device, dtype)
    N, d, M, k = 64, 8, 300, 16
    x, W, be, bd = encoder_inputs(N, d, M, dtype, seed=4, device=device)
    g = torch.Generator().manual_seed(8)
    grad = torch.randn(N, d, generator=g).to(device)
    W_dec = grid((M, d), g).to(device, dtype)
    g32 = reference.normalize_grad(grad, grad_norm)
    if dtype == torch.float16:
        scale = torch.ldexp(torch.ones(N, 1, device=device), torch.frexp(g32.abs().amax(1, keepdim=True))[1])
        rounded = (g32 / scale).to(dtype).float() * scale
    else:
        rounded = g32.to(dtype).float()
    out = gradient_topk_encode(x, grad, W, be, W_dec, bd, k, beta=4.0, grad_norm=grad_norm, backend=backend)
    expect = gradient_topk_encode(x, rounded, W, be, W_dec, bd, k, beta=4.0, backend="reference")
    unrounded = gradient_topk_encode(x, g32, W, be, W_dec, bd, k, beta=4.0, backend="reference")
    assert not torch.equal(unrounded.indices, expect.indices)
    assert torch.equal(out.indices, expect.indices)
    assert torch.equal(out.values, expect.values)
