"""saekit's own checkpoint format: round trips and clear errors."""

import json

import pytest
import torch

from saekit.io import load_sae
from saekit.nn import GradientTopKSAE, TopKSAE


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_round_trip(tmp_path, dtype):
    sae = GradientTopKSAE(8, 24, 3, beta=0.5, grad_norm="none", k_aux=7, dtype=dtype)
    with torch.no_grad():
        sae.b_enc.normal_()
    sae.save(tmp_path)
    loaded = TopKSAE.load(tmp_path)
    assert type(loaded) is GradientTopKSAE and loaded.cfg == sae.cfg
    assert loaded.W_enc.dtype == dtype
    for name, p in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name
    x, grad = torch.randn(5, 8, dtype=dtype), torch.randn(5, 8, dtype=dtype)
    assert torch.equal(loaded(x, grad).code.indices, sae(x, grad).code.indices)
    assert load_sae(tmp_path, dtype=torch.float32).W_enc.dtype == torch.float32


def test_missing_tensor_names_file_and_key(tmp_path):
    from safetensors.torch import load_file, save_file

    TopKSAE(8, 24, 3).save(tmp_path)
    tensors = load_file(tmp_path / "sae.safetensors")
    del tensors["b_enc"]
    save_file(tensors, tmp_path / "sae.safetensors")
    with pytest.raises(ValueError, match=r"sae\.safetensors: missing tensor 'b_enc'"):
        load_sae(tmp_path)


def test_wrong_shape_and_unknown_architecture(tmp_path):
    TopKSAE(8, 24, 3).save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "n_latents": 25}))
    with pytest.raises(ValueError, match=r"sae\.safetensors: tensor 'W_enc' has shape \[24, 8\], expected \[25, 8\]"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(ValueError, match=r"cfg\.json: unknown architecture 'gated'"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cfg\.json: not valid JSON"):
        load_sae(tmp_path)


def test_corrupt_weights_and_missing_dir(tmp_path):
    TopKSAE(8, 24, 3).save(tmp_path)
    (tmp_path / "sae.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"sae\.safetensors: cannot be read"):
        load_sae(tmp_path)
    with pytest.raises(ValueError, match=r"cfg\.json: missing"):
        load_sae(tmp_path / "nowhere")


def test_bad_beta_dtype_and_class(tmp_path):
    TopKSAE(8, 24, 3).save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "beta": None}))
    with pytest.raises(ValueError, match=r"cfg\.json: SAEConfig\.beta must be a finite number, got None"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        load_sae(tmp_path, dtype=torch.int32)
    with pytest.raises(ValueError, match="holds a 'topk' SAE"):
        GradientTopKSAE.load(tmp_path)
    assert type(TopKSAE.load(tmp_path)) is TopKSAE
    GradientTopKSAE(8, 24, 3).save(tmp_path / "g")
    assert type(TopKSAE.load(tmp_path / "g")) is GradientTopKSAE  # a g-SAE is a TopKSAE
