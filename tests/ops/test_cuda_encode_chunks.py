"""The CUDA encoder's chunked selection on a GPU: the threshold filter, the per-row candidate
cap and the full merge after an overflow, forced on small shapes by capping the chunk size
with SAEKIT_CUDA_ENCODE_CHUNK. Latent offsets that rise with the index make every chunk beat
the rows' thresholds (overflow on every chunk); falling offsets leave later chunks with almost
no candidates. Grid data keeps every product exact, so selections must equal the reference's."""

import pytest
import torch

from saekit.ops import gradient_topk_encode, topk_encode
from tests.ops.cases import encoder_inputs, grid

pytestmark = pytest.mark.gpu

N, d, M = 37, 16, 1000


def _inputs(dtype, order, seed):
    x, W, be, bd = encoder_inputs(N, d, M, torch.float64, seed=seed)
    step = 4.0 * torch.div(torch.arange(M, dtype=torch.float64), 8, rounding_mode="floor")
    be = be + {"rising": step, "falling": -step, "plain": 0 * step}[order]
    g = torch.Generator().manual_seed(seed + 1)
    grad, W_dec = grid((N, d), g), grid((M, d), g)
    dead = torch.rand(M, generator=g) < 0.3
    return [t.to(device="cuda", dtype=dtype) for t in (x, W, be, bd, grad, W_dec)] + [dead.cuda()]


@pytest.mark.parametrize("chunk", [64, 300])
@pytest.mark.parametrize("k", [4, 37])
@pytest.mark.parametrize("order", ["plain", "rising", "falling"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_chunked_selection_equals_reference(monkeypatch, dtype, order, k, chunk):
    x, W, be, bd, grad, W_dec, dead = _inputs(dtype, order, seed=k + chunk)
    k_aux = 2 * k
    expect = topk_encode(x, W, be, bd, k, dead=dead, k_aux=k_aux, backend="reference")
    expect_g = gradient_topk_encode(x, grad, W, be, W_dec, bd, k, beta=0.5, backend="reference")
    monkeypatch.setenv("SAEKIT_CUDA_ENCODE_CHUNK", str(chunk))
    out = topk_encode(x, W, be, bd, k, dead=dead, k_aux=k_aux, backend="cuda")
    out_g = gradient_topk_encode(x, grad, W, be, W_dec, bd, k, beta=0.5, backend="cuda")
    for got, want in ((out, expect), (out_g, expect_g)):
        for a, b in zip(got, want):
            assert torch.equal(a, b)


def test_bad_chunk_setting_is_an_error(monkeypatch):
    x, W, be, bd, *_ = _inputs(torch.float32, "plain", seed=0)
    monkeypatch.setenv("SAEKIT_CUDA_ENCODE_CHUNK", "lots")
    with pytest.raises(ValueError, match="SAEKIT_CUDA_ENCODE_CHUNK"):
        topk_encode(x, W, be, bd, 4, backend="cuda")
