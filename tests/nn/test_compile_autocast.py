"""The SAE modules under torch.autocast and torch.compile (fullgraph=True, and with AuxK
without)."""

import pytest
import torch

from saekit.nn import GradientTopKSAE, TopKSAE


def _loss(sae, x, grad=None):
    out = sae(x) if grad is None else sae(x, grad)
    return (out.x_hat.float() - x).pow(2).sum(), out


def _step(sae, x, grad=None, loss_fn=_loss):
    loss, out = loss_fn(sae, x, grad)
    loss.backward()
    return loss.detach(), out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_runs_in_low_precision_and_trains_fp32_weights(dtype):
    torch.manual_seed(0)
    sae = TopKSAE(16, 64, 4, backend="cpu")
    x = torch.randn(12, 16)
    with torch.autocast("cpu", dtype=dtype):
        loss, out = _step(sae, x)
    assert out.x_hat.dtype == dtype and out.code.values.dtype == dtype
    assert sae.W_enc.dtype == torch.float32 and sae.W_enc.grad.dtype == torch.float32
    fp32 = TopKSAE(16, 64, 4, backend="cpu")
    fp32.load_state_dict(sae.state_dict())
    ref_loss, _ = _step(fp32, x)
    assert abs(loss.item() - ref_loss.item()) <= 0.05 * ref_loss.item()
    cos = torch.nn.functional.cosine_similarity(sae.W_enc.grad.flatten(), fp32.W_enc.grad.flatten(), dim=0)
    assert cos > 0.98


@pytest.mark.parametrize("cls", [TopKSAE, GradientTopKSAE])
def test_compile_fullgraph_forward_and_backward(cls):
    torch.manual_seed(0)
    sae = cls(16, 64, 4, backend="cpu")
    x = torch.randn(10, 16)
    grad = torch.randn_like(x) if cls is GradientTopKSAE else None
    eager_loss, _ = _step(sae, x, grad)
    eager_grads = [p.grad.clone() for p in sae.parameters()]
    sae.zero_grad()
    torch._dynamo.reset()
    # fullgraph: any graph break in the forward raises; AOTAutograd traces the backward graph
    # from it ahead of time, so the backward is compiled without breaks too.
    compiled = torch.compile(_loss, fullgraph=True, backend="aot_eager")
    loss, _ = _step(sae, x, grad, compiled)
    torch.testing.assert_close(loss, eager_loss)
    for p, g in zip(sae.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)


def test_compile_with_auxk_matches_eager():
    """AuxK's k_aux is the dead count (data): plain torch.compile breaks the graph there and
    still gives eager's loss and gradients."""
    torch.manual_seed(0)
    sae = TopKSAE(16, 64, 4, k_aux=8, backend="cpu")
    x = torch.randn(10, 16)
    dead = torch.arange(64) % 3 == 0

    def loss_fn(sae, x, grad=None):
        out = sae(x, dead=dead)
        return (out.x_hat - x).pow(2).sum() + sae.auxk_loss(x, out), out

    eager_loss, _ = _step(sae, x, loss_fn=loss_fn)
    eager_grads = [p.grad.clone() for p in sae.parameters()]
    sae.zero_grad()
    torch._dynamo.reset()
    loss, _ = _step(sae, x, loss_fn=torch.compile(loss_fn, backend="aot_eager"))
    torch.testing.assert_close(loss, eager_loss)
    for p, g in zip(sae.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)
