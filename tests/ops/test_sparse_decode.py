import pytest
import torch

from saekit.ops import sparse_decode
from tests.ops.cases import (
    DEVICES_BACKENDS,
    DTYPES,
    WITH_TRITON_CPU,
    assert_close_to_oracle,
    grads,
    leaves,
    require,
    shape_id,
)

# d = 6 and 100 are not multiples of the CUDA kernels' 8-wide 16-bit packs; d = 6 not of their
# 4-wide float32 ones either.
SHAPES = [(33, 16, 40, 5), (7, 8, 13, 13), (5, 4, 9, 1), (0, 8, 16, 4), (64, 100, 3001, 32), (9, 6, 50, 3)]


def _inputs(N, d, M, k, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(N, k, generator=g).relu()
    indices = torch.randint(0, M, (N, k), generator=g)
    W_dec = torch.randn(M, d, generator=g)
    b_dec = torch.randn(d, generator=g)
    return values.to(device, dtype), indices.to(device), W_dec.to(device, dtype), b_dec.to(device, dtype)


def _dense_decode(values, indices, W_dec, b_dec):
    """An independent computation: scatter into a dense [N, M] code, then one matmul."""
    dense = torch.zeros(values.shape[0], W_dec.shape[0], dtype=torch.float64)
    dense.index_put_((torch.arange(values.shape[0]).unsqueeze(1).expand_as(indices), indices),
                     values.double(), accumulate=True)
    return dense @ W_dec.double() + b_dec.double()


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_matches_reference(device, backend, dtype, shape):
    N, d, M, k = shape
    v, idx, W, b = _inputs(N, d, M, k, dtype, seed=N + k, device=device)
    mine, ref, ref64 = leaves(v, W, b), leaves(v, W, b), leaves(v.double(), W.double(), b.double())
    out = sparse_decode(mine[0], idx, *mine[1:], backend=backend)
    expect = sparse_decode(ref[0], idx, *ref[1:], backend="reference")
    oracle = sparse_decode(ref64[0], idx, *ref64[1:], backend="reference")
    assert out.dtype == dtype and out.shape == (N, d)
    assert_close_to_oracle(out, expect, oracle, "x_hat")
    torch.testing.assert_close(oracle.cpu(), _dense_decode(*(t.cpu() for t in (v, idx, W, b))))
    up = torch.randn(N, d, generator=torch.Generator().manual_seed(5)).to(device)
    for name, a, bb, c in zip(("dvalues", "dW_dec", "db_dec"), grads([out], mine, [up]),
                              grads([expect], ref, [up]), grads([oracle], ref64, [up])):
        assert a.dtype == dtype
        assert_close_to_oracle(a, bb, c, name)


@pytest.mark.parametrize("device,backend", WITH_TRITON_CPU)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_off_a_16_byte_boundary(device, backend, dtype):
    """W_dec and grad_out as contiguous views that start one element into their storage: the
    CUDA kernels' 16-byte loads must not be taken for them."""
    require(backend, "sparse_decode", device, dtype)
    N, d, M, k = 12, 16, 30, 4
    v, idx, W, b = _inputs(N, d, M, k, dtype, seed=2, device=device)
    W_off = torch.empty(M * d + 1, dtype=dtype, device=device)[1:].view(M, d).copy_(W)
    up = torch.randn(N * d + 1, generator=torch.Generator().manual_seed(3)).to(device)[1:].view(N, d)

    def run(weights, backend_):
        leaf_v = v.clone().requires_grad_(True)
        weights.requires_grad_(True)
        out = sparse_decode(leaf_v, idx, weights, b, backend=backend_)
        out.float().backward(up)
        return out, leaf_v.grad, weights.grad

    oracle = [v.double(), W.double(), b.double()]
    up64 = up.double()

    def run64():
        leaf_v, weights = oracle[0].clone().requires_grad_(True), oracle[1].clone().requires_grad_(True)
        sparse_decode(leaf_v, idx, weights, oracle[2], backend="reference").backward(up64)
        return sparse_decode(leaf_v, idx, weights, oracle[2], backend="reference"), leaf_v.grad, weights.grad

    for name, a, r, o in zip(("x_hat", "dvalues", "dW_dec"), run(W_off, backend), run(W.clone(), "reference"),
                             run64()):
        assert_close_to_oracle(a.detach(), r.detach(), o.detach(), name)


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d,M", [(40, 500), (6, 500), (40, 1)])
def test_latents_chosen_by_most_tokens(device, backend, dtype, d, M):
    """Latent 0 in every token and latent M - 1 in every other one (with M = 1: every entry on
    one latent), as early in training: their W_dec gradients sum thousands of entries (the CUDA
    backward splits them across blocks and adds the parts in a fixed order), exactly
    reproducible from run to run (except Triton's, whose float32 atomics may add in any order)."""
    N, k = 3000, 24
    v, idx, W, b = _inputs(N, d, M, k, dtype, seed=11, device=device)
    idx[:, 0] = 0
    idx[::2, 1] = M - 1
    mine, ref, ref64 = leaves(v, W, b), leaves(v, W, b), leaves(v.double(), W.double(), b.double())
    up = torch.randn(N, d, generator=torch.Generator().manual_seed(6)).to(device)
    out = sparse_decode(mine[0], idx, *mine[1:], backend=backend)
    expect = sparse_decode(ref[0], idx, *ref[1:], backend="reference")
    oracle = sparse_decode(ref64[0], idx, *ref64[1:], backend="reference")
    got = grads([out], mine, [up])
    for name, a, bb, c in zip(("dvalues", "dW_dec", "db_dec"), got, grads([expect], ref, [up]),
                              grads([oracle], ref64, [up])):
        assert_close_to_oracle(a, bb, c, name)
    if backend != "triton":
        again = grads([sparse_decode(mine[0], idx, *mine[1:], backend=backend)], mine, [up])
        assert torch.equal(got[1], again[1])


@pytest.mark.parametrize("device,backend", WITH_TRITON_CPU)
def test_repeated_indices_add_up(device, backend):
    require(backend, "sparse_decode", device, torch.float32)
    W = torch.randn(5, 3, device=device)
    b = torch.zeros(3, device=device)
    values = torch.tensor([[1.0, 2.0, 0.5]], device=device)
    indices = torch.tensor([[4, 4, 1]], device=device)
    out = sparse_decode(values, indices, W, b, backend=backend)
    torch.testing.assert_close(out[0], 3.0 * W[4] + 0.5 * W[1])


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS)
def test_gradcheck_float64(device, backend):
    require(backend, "sparse_decode", device, torch.float64)
    v, idx, W, b = _inputs(6, 5, 7, 4, torch.float64, device=device)
    idx[0, 1] = idx[0, 0]  # a repeated latent in one row
    assert torch.autograd.gradcheck(lambda *a: sparse_decode(a[0], idx, *a[1:], backend=backend), leaves(v, W, b))


@pytest.mark.parametrize("device,backend", DEVICES_BACKENDS + (("cpu", "reference"),))
@pytest.mark.parametrize("bad", [-1, 9, 2**40])
def test_out_of_range_index_is_an_error(device, backend, bad):
    v, idx, W, b = _inputs(4, 3, 9, 2, torch.float32, device=device)
    idx[2, 1] = bad
    with pytest.raises(ValueError, match="indices must lie in"):
        sparse_decode(v, idx, W, b, backend=backend)
    if backend != "reference":
        with pytest.raises(ValueError, match="indices must lie in"):
            torch.ops.saekit.sparse_decode(v, idx, W, b)
        with pytest.raises(ValueError, match="indices must lie in"):
            torch.ops.saekit.sparse_decode_backward(torch.ones(4, 3, device=device), v, idx, W)
