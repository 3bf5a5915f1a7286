"""Training helpers against direct computations."""

import pytest
import torch

from saekit.nn import (
    DeadLatentTracker,
    GradientTopK,
    SparseCode,
    TopKSAE,
    auxk_loss,
    fvu,
    normalized_mse,
    remove_parallel_gradient_,
)


def test_normalize_decoder_gives_unit_rows_and_keeps_directions():
    sae = TopKSAE(6, 10, 2)
    with torch.no_grad():
        sae.W_dec.mul_(torch.arange(1, 11, dtype=torch.float32)[:, None])
    before = sae.W_dec.detach().clone()
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(10))
    cos = torch.nn.functional.cosine_similarity(before, sae.W_dec.detach(), dim=1)
    torch.testing.assert_close(cos, torch.ones(10))


def test_remove_parallel_gradient_leaves_orthogonal_part():
    W = torch.nn.Parameter(torch.randn(7, 5))
    g = torch.randn(7, 5)
    W.grad = g.clone()
    remove_parallel_gradient_(W)
    w = W.detach()
    torch.testing.assert_close((W.grad * w).sum(1), torch.zeros(7), atol=1e-5, rtol=0)
    expected = g - ((g * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)) * w
    torch.testing.assert_close(W.grad, expected)


def test_fvu_and_normalized_mse_match_formulas():
    x, x_hat = torch.randn(3, 4, 6, dtype=torch.float64), torch.randn(3, 4, 6, dtype=torch.float64)
    xf, hf = x.reshape(-1, 6), x_hat.reshape(-1, 6)
    expected_fvu = ((xf - hf) ** 2).sum() / ((xf - xf.mean(0)) ** 2).sum()
    expected_nmse = ((xf - hf) ** 2).sum() / (xf**2).sum()
    torch.testing.assert_close(fvu(x, x_hat).double(), expected_fvu, rtol=1e-5, atol=0)
    torch.testing.assert_close(normalized_mse(x, x_hat).double(), expected_nmse, rtol=1e-5, atol=0)
    assert fvu(x, x).item() == 0


def test_auxk_loss_is_residual_fvu_and_detaches_residual():
    residual = torch.randn(8, 4, requires_grad=True)
    e_hat = torch.randn(8, 4, requires_grad=True)
    loss = auxk_loss(residual, e_hat)
    expected = ((residual - e_hat) ** 2).sum() / ((residual - residual.mean(0)) ** 2).sum()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert residual.grad is None and e_hat.grad is not None
    assert auxk_loss(torch.zeros(0, 4), torch.zeros(0, 4)).item() == 0


def test_dead_latent_tracker_counts_tokens_since_fired():
    tracker = DeadLatentTracker(6, threshold_tokens=5)
    tracker.update(torch.tensor([[0, 1], [0, 2], [3, 0]]), torch.tensor([[1.0, 0.0], [2.0, 1.0], [1.0, 1.0]]))
    # latent 1 was selected with value 0: it did not fire.
    assert tracker.tokens_since_fired.tolist() == [0, 3, 0, 0, 3, 3]
    tracker.update(torch.tensor([[2, 2], [2, 2]]), torch.ones(2, 2))
    assert tracker.tokens_since_fired.tolist() == [2, 5, 0, 2, 5, 5]
    assert tracker.dead.tolist() == [False, True, False, False, True, True]
    assert abs(tracker.dead_fraction() - 0.5) < 1e-9
    assert "tokens_since_fired" in tracker.state_dict()


def test_metrics_refuse_shapes_that_would_broadcast():
    x = torch.randn(6, 4)
    for metric in (fvu, normalized_mse):
        with pytest.raises(ValueError, match=r"x_hat must have the shape of x \[6, 4\], got \[6, 1\]"):
            metric(x, x[:, :1])


def test_dense_code_needs_room_for_every_index():
    code = SparseCode(torch.ones(2, 2), torch.tensor([[0, 7], [3, 1]]))
    assert code.dense(8)[0, 7] == 1
    with pytest.raises(ValueError, match=r"indices lie in \[0, 7\]: n_latents = 5 is too small"):
        code.dense(5)


def test_gradient_topk_refuses_a_non_finite_beta():
    for beta in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta must be finite"):
            GradientTopK(4, beta)
