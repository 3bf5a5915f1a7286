import math

import pytest
import torch

from saekit.ops import reference, topk_encode
from tests.ops.cases import (
    shape_id,
    DEVICES_BACKENDS,
    WITH_TRITON_CPU,
    DTYPES,
    assert_close_to_oracle,
    encoder_inputs,
    grads,
    leaves,
    require,
)

# (N, d, M, k): k = M, k = 1, N = 0, M not a multiple of 8, several CPU tiles of latents.
SHAPES = [(33, 16, 40, 5), (7, 8, 13, 13), (5, 4, 9, 1), (0, 8, 16, 4), (19, 12, 2100, 17), (64, 24, 77, 31)]


def _brute_force_indices(score_row, k):
    order = sorted(range(len(score_row)), key=lambda i: (-math.inf if math.isnan(score_row[i]) else -score_row[i], i))
    return order[:k]


def test_reference_selection_is_spec_order():
    """The oracle itself against a brute-force sort with SPEC's ordering (ties, NaN, -0.0)."""
    score = torch.tensor([[1.0, 3.0, 3.0, -0.0, 0.0, float("nan"), 3.0, float("nan")]])
    assert reference.select(score, 8).tolist() == [[5, 7, 1, 2, 6, 0, 3, 4]]
    g = torch.Generator().manual_seed(1)
    s = torch.randint(-3, 4, (20, 30), generator=g).float()
    got = reference.select(s, 7)
    for row, idx in zip(s.tolist(), got.tolist()):
        assert idx == _brute_force_indices(row, 7)


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_matches_reference(device, backend, dtype, shape):
    N, d, M, k = shape
    inputs = encoder_inputs(N, d, M, dtype, seed=N + M, device=device)
    mine, ref, ref64 = leaves(*inputs), leaves(*inputs), leaves(*(t.double() for t in inputs))
    out = topk_encode(*mine, k, backend=backend)
    expect = topk_encode(*ref, k, backend="reference")
    oracle = topk_encode(*ref64, k, backend="reference")
    assert out.values.dtype == dtype and out.indices.dtype == torch.int64
    assert out.values.shape == (N, k) and out.indices.shape == (N, k)
    assert torch.equal(out.indices, expect.indices)
    assert torch.equal(out.indices, oracle.indices)
    assert torch.equal(out.values, expect.values)  # grid data: exact pre-activations
    up = torch.randn(N, k, generator=torch.Generator().manual_seed(7)).to(device)
    for name, a, b, c in zip(("dx", "dW_enc", "db_enc", "db_dec"), grads([out.values], mine, [up]),
                             grads([expect.values], ref, [up]), grads([oracle.values], ref64, [up])):
        assert a.dtype == dtype
        assert_close_to_oracle(a, b, c, name)


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_latent_chosen_by_every_token(device, backend, dtype):
    """A latent whose bias puts it in every token's top k: its W_enc and b_enc gradients sum
    N entries (split across blocks by the CUDA backward), close to the float64 oracle."""
    N, d, M, k = 2500, 16, 300, 8
    x, W, be, bd = encoder_inputs(N, d, M, dtype, seed=4, device=device)
    be[5] = 64.0
    inputs = (x, W, be, bd)
    mine, ref, ref64 = leaves(*inputs), leaves(*inputs), leaves(*(t.double() for t in inputs))
    out = topk_encode(*mine, k, backend=backend)
    expect = topk_encode(*ref, k, backend="reference")
    oracle = topk_encode(*ref64, k, backend="reference")
    assert (out.indices == 5).any(1).all()
    assert torch.equal(out.indices, expect.indices)
    up = torch.randn(N, k, generator=torch.Generator().manual_seed(8)).to(device)
    for name, a, b, c in zip(("dx", "dW_enc", "db_enc", "db_dec"), grads([out.values], mine, [up]),
                             grads([expect.values], ref, [up]), grads([oracle.values], ref64, [up])):
        assert_close_to_oracle(a, b, c, name)


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
def test_gaussian_float32(device, backend):
    x, W, be, bd = encoder_inputs(300, 64, 3000, torch.float32, data="gauss", device=device)
    out = topk_encode(x, W, be, bd, 32, backend=backend)
    expect = topk_encode(x, W, be, bd, 32, backend="reference")
    assert torch.equal(out.indices, expect.indices)
    torch.testing.assert_close(out.values, expect.values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
def test_ties_go_to_lower_index(device, backend):
    N, d, M, k = 6, 4, 50, 9
    x = torch.zeros(N, d, device=device)
    W = torch.randn(M, d, device=device)
    b_enc = torch.tensor([1.0, 2.0] * 25, device=device)  # pre = b_enc in every row
    out = topk_encode(x, W, b_enc, torch.zeros(d, device=device), k, backend=backend)
    expected = [i for i in range(M) if i % 2 == 1][:k]
    assert out.indices.tolist() == [expected] * N
    assert out.values.tolist() == [[2.0] * k] * N


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
def test_nan_ranks_first(device, backend):
    x, W, be, bd = encoder_inputs(5, 8, 20, torch.float32, device=device)
    W[3, 0] = W[11, 2] = float("nan")
    out = topk_encode(x, W, be, bd, 4, backend=backend)
    expect = topk_encode(x, W, be, bd, 4, backend="reference")
    assert out.indices[:, :2].tolist() == [[3, 11]] * 5
    assert torch.equal(out.indices, expect.indices)
    assert out.values[:, :2].isnan().all()


@pytest.mark.parametrize("device,backend", WITH_TRITON_CPU)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_with_fewer_than_k_positive(device, backend, dtype):
    require(backend, "topk_encode", device, dtype)
    N, d, M, k = 10, 8, 30, 8
    x, W, be, bd = leaves(*encoder_inputs(N, d, M, dtype, device=device))
    with torch.no_grad():
        be[3:] -= 40.0  # only latents 0..2 can be positive; the others stay apart (exact)
    out = topk_encode(x, W, be, bd, k, backend=backend)
    expect = topk_encode(x, W, be, bd, k, backend="reference")
    assert torch.equal(out.indices, expect.indices)
    assert (out.values[:, 3:] == 0).all()
    out.values.sum().backward()
    # Gradient reaches only selected latents whose pre-activation is positive.
    pre = reference.pre_activations(x, W, be, bd).detach()
    positive_selected = torch.zeros(M, dtype=torch.bool, device=device)
    positive_selected[out.indices[pre.gather(1, out.indices) > 0]] = True
    assert (be.grad[~positive_selected] == 0).all()
    assert torch.equal(be.grad.float(), (pre > 0).float().scatter(1, out.indices, 1.0, reduce="multiply")
                       .mul(torch.zeros(N, M, device=device).scatter(1, out.indices, 1.0)).sum(0))


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k_aux", [0, 3, "all"])
def test_auxk_matches_reference(device, backend, dtype, k_aux):
    N, d, M, k = 21, 8, 45, 4
    inputs = encoder_inputs(N, d, M, dtype, seed=3, device=device)
    dead = torch.rand(M, generator=torch.Generator().manual_seed(4)) < 0.4
    dead = dead.to(device)
    k_aux = int(dead.sum()) if k_aux == "all" else k_aux
    mine, ref, ref64 = leaves(*inputs), leaves(*inputs), leaves(*(t.double() for t in inputs))
    out = topk_encode(*mine, k, dead=dead, k_aux=k_aux, backend=backend)
    expect = topk_encode(*ref, k, dead=dead, k_aux=k_aux, backend="reference")
    oracle = topk_encode(*ref64, k, dead=dead, k_aux=k_aux, backend="reference")
    assert out.aux_indices.shape == (N, k_aux)
    assert torch.equal(out.indices, expect.indices)
    assert torch.equal(out.aux_indices, expect.aux_indices)
    assert dead[out.aux_indices].all()
    assert torch.equal(out.aux_values, expect.aux_values)
    up = torch.randn(N, k, device=device), torch.randn(N, k_aux, device=device)
    for name, a, b, c in zip(("dx", "dW_enc", "db_enc", "db_dec"), grads([out.values, out.aux_values], mine, up),
                             grads([expect.values, expect.aux_values], ref, up),
                             grads([oracle.values, oracle.aux_values], ref64, up)):
        assert_close_to_oracle(a, b, c, name)


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
def test_gradcheck_float64(device, backend):
    require(backend, "topk_encode", device, torch.float64)
    inputs = leaves(*encoder_inputs(6, 5, 11, torch.float64, data="gauss", device=device))
    dead = torch.tensor([True, False] * 5 + [True], device=device)

    def f(x, W, be, bd):
        out = topk_encode(x, W, be, bd, 3, dead=dead, k_aux=2, backend=backend)
        return out.values, out.aux_values

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
def test_non_contiguous_inputs(device, backend):
    x, W, be, bd = encoder_inputs(20, 16, 30, torch.float32, device=device)
    x_nc = torch.stack([x, x], 2)[..., 0]
    W_nc = W.T.contiguous().T  # a [d, M] tensor seen as [M, d], as SAELens stores it
    assert not x_nc.is_contiguous() and not W_nc.is_contiguous()
    out = topk_encode(x_nc, W_nc, be, bd, 6, backend=backend)
    expect = topk_encode(x, W, be, bd, 6, backend="reference")
    assert torch.equal(out.indices, expect.indices) and torch.equal(out.values, expect.values)


@pytest.mark.parametrize("device,backend", WITH_TRITON_CPU)
def test_float16_pre_that_rounds_to_zero_gets_no_gradient(device, backend):
    """The documented deviation (README, Precision): the compiled backward passes take the ReLU
    mask from the returned float16 values, so a latent with 0 < pre < 2**-25 (pre = 2**-26 here,
    whose value rounds to 0) gets no gradient, where the reference masks on the float32 pre."""
    require(backend, "topk_encode", device, torch.float16)
    x = torch.full((2, 1), 2.0**-13, dtype=torch.float16, device=device)
    W = torch.tensor([[2.0**-13], [-1.0], [-1.0]], dtype=torch.float16, device=device)
    zeros = torch.zeros(3, dtype=torch.float16, device=device), torch.zeros(1, dtype=torch.float16, device=device)
    db_enc = {}
    for name in (backend, "reference"):
        b_enc = zeros[0].clone().requires_grad_(True)
        out = topk_encode(x, W, b_enc, zeros[1], 1, backend=name)
        assert out.indices.tolist() == [[0], [0]] and out.values.tolist() == [[0.0], [0.0]]
        out.values.float().sum().backward()
        db_enc[name] = b_enc.grad.tolist()
    assert db_enc["reference"] == [2.0, 0.0, 0.0]
    assert db_enc[backend] == [0.0, 0.0, 0.0]
