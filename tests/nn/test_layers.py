"""The layers against the ops' reference backend, on [..., d] inputs."""

import pytest
import torch

from saekit.nn import GradientTopK, GradientTopKSAE, SparseCode, SparseDecoder, TopK, TopKSAE
from saekit.ops import reference
from tests.ops.cases import encoder_inputs

BACKENDS = ("cpu", "reference")


def _flat(t):
    return t.reshape(-1, t.shape[-1])


@pytest.mark.parametrize("leading", [(7,), (2, 3), (0,), (1, 2, 2)], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_layer_matches_reference(leading, backend):
    x, W, be, bd = encoder_inputs(int(torch.tensor(leading).prod()), 12, 40, torch.float32, seed=3)
    x = x.reshape(*leading, 12)
    code = TopK(5, backend=backend)(x, W, be, bd)
    values, indices, _, _ = reference.topk_encode(_flat(x), W, be, bd, 5)
    assert code.values.shape == (*leading, 5)
    assert torch.equal(_flat(code.indices), indices)
    assert torch.equal(_flat(code.values), values)


def test_topk_on_pre_activations_matches_fused():
    x, W, be, bd = encoder_inputs(9, 8, 30, torch.float32, seed=4)
    pre = reference.pre_activations(x, W, be, bd)
    dense = TopK(6)(pre)
    fused = TopK(6)(x, W, be, bd)
    assert torch.equal(dense.indices, fused.indices)
    assert torch.equal(dense.values, fused.values)


def test_topk_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be a positive int"):
        TopK(0)
    with pytest.raises(ValueError, match="k must lie in"):
        TopK(50)(torch.randn(3, 10))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_topk_layer_matches_reference(backend):
    x, W, be, bd = encoder_inputs(10, 8, 32, torch.float32, seed=5)
    _, W_dec, _, _ = encoder_inputs(1, 8, 32, torch.float32, seed=6)
    grad = torch.randn(10, 8, generator=torch.Generator().manual_seed(1))
    layer = GradientTopK(4, beta=2.0, grad_norm="token", backend=backend)
    code = layer(x.reshape(2, 5, 8), grad.reshape(2, 5, 8), W, be, W_dec, bd)
    g = reference.normalize_grad(grad, "token")
    values, indices = reference.gradient_topk_encode(x, g, W, be, W_dec, bd, 4, 2.0)
    assert torch.equal(_flat(code.indices), indices)
    assert torch.equal(_flat(code.values), values)


def test_gradient_topk_without_grad_is_topk():
    x, W, be, bd = encoder_inputs(10, 8, 32, torch.float32, seed=7)
    code = GradientTopK(4, beta=5.0)(x, None, W, be, W, bd)
    assert torch.equal(code.indices, TopK(4)(x, W, be, bd).indices)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_decoder_matches_dense(backend):
    dec = SparseDecoder(20, 6, backend=backend)
    with torch.no_grad():
        dec.bias.normal_()
    values = torch.randn(2, 3, 4)
    indices = torch.randint(0, 20, (2, 3, 4))
    x_hat = dec(SparseCode(values, indices))
    dense = SparseCode(values, indices).dense(20) @ dec.weight + dec.bias
    torch.testing.assert_close(x_hat, dense)


def test_dense_helper_and_l0():
    code = SparseCode(torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[3, 1, 3]]))
    assert code.dense(5).tolist() == [[0.0, 0.0, 0.0, 3.0, 0.0]]
    assert code.l0.tolist() == [2.0]


def _sae_grads(sae, x, grad=None):
    sae.zero_grad()
    out = sae(x) if grad is None else sae(x, grad)
    loss = (out.x_hat - x).pow(2).sum()
    loss.backward()
    return out, {n: p.grad.clone() for n, p in sae.named_parameters()}


@pytest.mark.parametrize("cls", [TopKSAE, GradientTopKSAE])
def test_sae_backends_agree(cls):
    torch.manual_seed(0)
    x = torch.randn(4, 6, 16)
    grad = torch.randn_like(x) if cls is GradientTopKSAE else None
    sae = cls(16, 48, 5, backend="reference")
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    ref_out, ref_grads = _sae_grads(sae, x, grad)
    sae.backend = "cpu"
    out, grads = _sae_grads(sae, x, grad)
    assert torch.equal(out.code.indices, ref_out.code.indices)
    torch.testing.assert_close(out.x_hat, ref_out.x_hat, rtol=1e-5, atol=1e-5)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_sae_checks_input_dimension():
    sae = TopKSAE(8, 16, 2)
    with pytest.raises(ValueError, match=r"d_in = 8"):
        sae(torch.randn(3, 9))
    with pytest.raises(ValueError, match="grad"):
        GradientTopKSAE(8, 16, 2)(torch.randn(3, 8), torch.randn(3, 7))


def test_sae_init_is_tied_and_unit_norm():
    sae = TopKSAE(8, 32, 2)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))
    assert torch.equal(sae.W_enc, sae.W_dec)


@pytest.mark.parametrize("cls", [TopKSAE, GradientTopKSAE])
def test_auxk_selects_among_dead_only(cls):
    torch.manual_seed(1)
    sae = cls(8, 32, 3, k_aux=4)
    x = torch.randn(10, 8)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[1, 5, 9, 30, 31]] = True
    out = sae(x, dead=dead)
    assert out.aux.indices.shape == (10, 4)
    assert dead[out.aux.indices].all()
    pre = reference.pre_activations(x, sae.W_enc, sae.b_enc, sae.b_dec).detach()
    dead_ids = dead.nonzero().squeeze(1)
    expected = dead_ids[reference.select(pre[:, dead_ids], 4)]
    assert torch.equal(out.aux.indices, expected)
    loss = sae.auxk_loss(x, out)
    loss.backward()
    assert sae.W_dec.grad[~dead].abs().sum() == 0  # the residual is a constant: only dead rows learn
    assert sae.W_dec.grad[dead].abs().sum() > 0


def test_auxk_clamps_to_number_of_dead():
    sae = TopKSAE(8, 32, 3, k_aux=16)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:2] = True
    assert sae(torch.randn(5, 8), dead=dead).aux.indices.shape == (5, 2)
    dead[:] = False
    assert sae(torch.randn(5, 8), dead=dead).aux.indices.shape == (5, 0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("cls", [TopKSAE, GradientTopKSAE])
def test_sae_on_gpu_matches_reference(cls, backend):
    from tests.ops.cases import require

    require(backend, "topk_encode", "cuda", torch.bfloat16)
    torch.manual_seed(0)
    x = torch.randn(3, 100, 64, device="cuda")
    grad = torch.randn_like(x) if cls is GradientTopKSAE else None
    sae = cls(64, 1000, 16, backend="reference", device="cuda")
    ref_out, ref_grads = _sae_grads(sae, x, grad)
    sae.backend = backend
    out, grads = _sae_grads(sae, x, grad)
    assert (out.code.indices == ref_out.code.indices).float().mean() > 0.999
    torch.testing.assert_close(out.x_hat, ref_out.x_hat, rtol=1e-4, atol=1e-4)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-3, atol=1e-4, msg=name)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert sae(x).x_hat.dtype == torch.bfloat16


@pytest.mark.parametrize("sae", [TopKSAE(8, 16, 2), GradientTopKSAE(8, 16, 2), TopKSAE(8, 16, 2, activation="batch_topk")],
                         ids=["topk", "gradient_topk", "batch_topk"])
def test_bad_dead_mask_is_an_error(sae):
    x = torch.randn(4, 8)
    inputs = (x, torch.randn(4, 8)) if isinstance(sae, GradientTopKSAE) else (x,)
    for dead, error, match in [(torch.ones(3, dtype=torch.bool), ValueError, r"dead must have shape \[M\]"),
                               (torch.ones(20, dtype=torch.bool), ValueError, r"dead must have shape \[M\]"),
                               (torch.ones(16), TypeError, "dead must be a bool tensor"),
                               (torch.ones(16, dtype=torch.int64), TypeError, "dead must be a bool tensor")]:
        with pytest.raises(error, match=match):
            sae(*inputs, dead=dead)
