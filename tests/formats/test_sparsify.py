"""EleutherAI sparsify checkpoints against the real library: saved by sparsify, loaded by saekit
(and the reverse), with the same codes and reconstructions on the same inputs."""

import pytest
import torch
from saekit.formats import detect, load, load_sparsify, save_sparsify
from saekit.nn import GradientTopKSAE, TopKSAE

from tests.formats.common import (
    assert_close,
    assert_same_code,
    dense,
    inputs,
    random_weights,
    saekit_dense,
    set_weights,
)

sparsify = pytest.importorskip("sparsify")
from sparsify import SparseCoder, SparseCoderConfig

D, M, K = 16, 48, 5


@pytest.fixture(autouse=True)
def eager_sparsify_decoder(monkeypatch):
    """sparsify picks its Triton decoder at import time when Triton is installed, which cannot
    run CPU tensors; its own eager fallback (embedding_bag) computes the same sum."""
    import sparsify.sparse_coder
    import sparsify.utils

    monkeypatch.setattr(sparsify.sparse_coder, "decoder_impl", sparsify.utils.eager_decode)


def _coder(w, **cfg):
    coder = SparseCoder(D, SparseCoderConfig(num_latents=cfg.pop("num_latents", M), k=K, **cfg))
    with torch.no_grad():
        coder.encoder.weight.copy_(w["W_enc"])
        coder.encoder.bias.copy_(w["b_enc"])
        coder.W_dec.copy_(w["W_dec"])
        coder.b_dec.copy_(w["b_dec"])
    return coder


def _compare(sae, coder, x):
    with torch.no_grad():
        out = coder.encode(x)
        assert_same_code(saekit_dense(sae, x), dense(out.top_acts, out.top_indices, coder.num_latents))
        assert_close(sae(x).x_hat, coder.decode(out.top_acts, out.top_indices))


@pytest.mark.parametrize("normalize_decoder", [True, False], ids=["normalize_decoder", "free_decoder"])
def test_saved_by_sparsify(tmp_path, normalize_decoder):
    w = random_weights(D, M, unit_norm=normalize_decoder)
    coder = _coder(w, normalize_decoder=normalize_decoder, multi_topk=True)
    coder.save_to_disk(tmp_path)
    assert detect(tmp_path) == "sparsify"
    sae = load_sparsify(tmp_path)
    assert type(sae) is TopKSAE and (sae.d_in, sae.n_latents, sae.k) == (D, M, K)
    _compare(sae, coder, inputs(D))


def test_rows_with_fewer_than_k_positive(tmp_path):
    """sparsify picks among relu(pre) and saekit among pre: only zero-valued fillers differ."""
    w = random_weights(D, M)
    w["b_enc"] = w["b_enc"] - 2.0  # most pre-activations negative
    coder = _coder(w)
    coder.save_to_disk(tmp_path)
    x = inputs(D)
    with torch.no_grad():
        assert bool(((coder.encode(x).top_acts > 0).sum(-1) < K).any())
    _compare(load_sparsify(tmp_path), coder, x)


def test_expansion_factor(tmp_path):
    coder = _coder(random_weights(D, 2 * D), num_latents=0, expansion_factor=2)
    coder.save_to_disk(tmp_path)
    sae = load_sparsify(tmp_path)
    assert sae.n_latents == 2 * D
    _compare(sae, coder, inputs(D))


def test_run_directory_with_hookpoints(tmp_path):
    for i, name in enumerate(["layers.0", "layers.1"]):
        _coder(random_weights(D, M, seed=i)).save_to_disk(tmp_path / name)
    with pytest.raises(ValueError, match=r"2 hookpoints \['layers\.0', 'layers\.1'\]; pass hookpoint="):
        load_sparsify(tmp_path)
    sae = load(tmp_path, hookpoint="layers.1")
    assert sae.cfg.extra["sparsify"]["hookpoint"] == "layers.1"
    _compare(sae, SparseCoder.load_from_disk(tmp_path / "layers.1"), inputs(D))


@pytest.mark.parametrize("setting, key", [
    ({"skip_connection": True}, "skip_connection"),
    ({"transcode": True}, "transcode"),
    ({"activation": "groupmax", "num_latents": K * 8}, "activation"),
])
def test_unsupported_settings(tmp_path, setting, key):
    SparseCoder(D, SparseCoderConfig(**{"num_latents": M, "k": K, **setting})).save_to_disk(tmp_path)
    with pytest.raises(ValueError, match=rf"cfg\.json: key '{key}'"):
        load_sparsify(tmp_path)


# The reverse direction: saekit SAEs exported, loaded by sparsify's own loaders.

@pytest.mark.parametrize("unit_norm", [True, False], ids=["unit_dec", "free_dec"])
def test_export(tmp_path, unit_norm):
    sae = TopKSAE(D, M, K, k_aux=11)
    set_weights(sae, random_weights(D, M, seed=3, unit_norm=unit_norm))
    save_sparsify(sae, tmp_path)
    coder = SparseCoder.load_from_disk(tmp_path)
    assert coder.cfg.normalize_decoder == unit_norm
    _compare(sae, coder, inputs(D))
    assert load_sparsify(tmp_path).cfg == sae.cfg


def test_export_run_layout(tmp_path):
    saes = {}
    for i, name in enumerate(["layers.0", "layers.2"]):
        saes[name] = GradientTopKSAE(D, M, K, beta=0.5) if i else TopKSAE(D, M, K)
        set_weights(saes[name], random_weights(D, M, seed=10 + i))
        save_sparsify(saes[name], tmp_path, hookpoint=name)
    coders = SparseCoder.load_many(str(tmp_path), local=True)
    assert sorted(coders) == sorted(saes)
    for name, sae in saes.items():
        _compare(sae, coders[name], inputs(D))  # without a gradient a g-SAE selects as TopK
        back = load_sparsify(tmp_path, hookpoint=name)
        assert type(back) is type(sae) and back.cfg.beta == sae.cfg.beta


def test_export_batch_topk_is_refused(tmp_path):
    with pytest.raises(ValueError, match="BatchTopK"):
        save_sparsify(TopKSAE(D, M, K, activation="batch_topk"), tmp_path)
