"""BatchTopK against a dense batch-wide selection."""

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
