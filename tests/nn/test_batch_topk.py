"""BatchTopK against a dense batch-wide selection."""

import pytest
import torch

from saekit.nn import BatchTopK, TopKSAE
from saekit.ops import reference
from tests.ops.cases import encoder_inputs


def _dense_batch_topk(x, W, be, bd, k):
    z = torch.relu(reference.pre_activations(x, W, be, bd))
    flat = z.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.sort(flat, descending=True, stable=True).indices[: k * x.shape[0]]] = True
    return torch.where(keep.reshape(z.shape) & (z > 0), z, 0)


def test_batch_topk_matches_dense_selection():
    x, W, be, bd = encoder_inputs(16, 8, 40, torch.float32, seed=2, data="randn")
    layer = BatchTopK(3)
    code = layer(x, W, be, bd)
    torch.testing.assert_close(code.dense(40), _dense_batch_topk(x, W, be, bd, 3))
    assert code.l0.sum() == 3 * 16


def test_batch_topk_exact_when_one_row_takes_most_of_the_batch():
    x, W, be, bd = encoder_inputs(6, 8, 64, torch.float32, seed=3, data="randn")
    x[2] *= 50  # row 2 dominates: it keeps more than the first cap = 4k candidates
    layer = BatchTopK(2)
    code = layer(x, W, be, bd)
    expected = _dense_batch_topk(x, W, be, bd, 2)
    assert (expected[2] > 0).sum() > 8
    torch.testing.assert_close(code.dense(64), expected)


def test_batch_topk_threshold_learns_and_applies_in_eval():
    x, W, be, bd = encoder_inputs(32, 8, 40, torch.float32, seed=4, data="randn")
    layer = BatchTopK(4)
    code = layer(x, W, be, bd)
    smallest = code.values[code.values > 0].min()
    torch.testing.assert_close(layer.threshold, smallest)
    layer.eval()
    code = layer(x, W, be, bd)
    z = torch.relu(reference.pre_activations(x, W, be, bd))
    torch.testing.assert_close(code.dense(40), torch.where(z > layer.threshold, z, 0))


def test_batch_topk_sae_trains_and_saves(tmp_path):
    sae = TopKSAE(8, 32, 2, activation="batch_topk")
    x = torch.randn(20, 8)
    out = sae(x)
    (out.x_hat - x).pow(2).sum().backward()
    assert sae.W_enc.grad.abs().sum() > 0
    sae.save(tmp_path)
    loaded = TopKSAE.load(tmp_path)
    assert loaded.cfg.architecture == "batch_topk"
    assert torch.equal(loaded.activation.threshold, sae.activation.threshold)


def test_threshold_moves_once_per_forward_when_the_candidates_double():
    """Row 0 alone holds positive activations, so the first 4k candidates saturate and the
    selection widens; the threshold still takes one step (the first: the smallest kept)."""
    x = torch.zeros(8, 4)
    x[0, 0] = 1.0
    W = torch.zeros(64, 4)
    W[:, 0] = torch.linspace(10, 1, 64)
    layer = BatchTopK(1, momentum=0.5)
    code = layer(x, W, torch.full((64,), -0.5), torch.zeros(4))
    assert (code.values > 0).sum() == 8 > 4  # more than the first cap of candidates
    first = code.values[code.values > 0].min()
    torch.testing.assert_close(layer.threshold, first)
    layer(x * 2, W, torch.full((64,), -0.5), torch.zeros(4))
    torch.testing.assert_close(layer.threshold, (first + (x * 2 @ W.T - 0.5).sort(1, descending=True).values[0, 7]) / 2)


def test_bad_k_and_momentum_are_errors():
    x, W, be, bd = encoder_inputs(4, 8, 6, torch.float32)
    with pytest.raises(ValueError, match="k must lie in"):
        BatchTopK(7)(x, W, be, bd)
    for momentum in (float("nan"), -0.1, 1.5):
        with pytest.raises(ValueError, match="momentum must lie in"):
            BatchTopK(2, momentum=momentum)
