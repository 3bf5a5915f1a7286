"""Bad foreign checkpoints raise a ValueError naming the file and the key; format detection; and
round trips through the exporters, all without the peer libraries installed."""

import json

import pytest
import torch
from saekit import formats
from saekit.formats import (
    detect,
    load,
    load_saelens,
    load_sparsify,
)
from saekit.nn import GradientTopKSAE, TopKSAE
from safetensors.torch import load_file, save_file

from tests.formats.common import (
    assert_close,
    inputs,
    random_weights,
    saekit_dense,
    set_weights,
)

D, M, K = 8, 24, 3
WEIGHTS = {"saelens": "sae_weights.safetensors", "sparsify": "sae.safetensors"}
LOADERS = {"saelens": load_saelens, "sparsify": load_sparsify}
KEYS = {"saelens": "b_enc", "sparsify": "encoder.bias"}  # a tensor each format must hold


def _write(fmt, path, sae=None):
    if sae is None:
        sae = TopKSAE(D, M, K)
        set_weights(sae, random_weights(D, M))
    formats.save(sae, path, format=fmt)
    return sae


def _edit_tensors(file, edit):
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file)


def _edit_cfg(file, edit):
    cfg = json.loads(file.read_text())
    edit(cfg)
    file.write_text(json.dumps(cfg))


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_missing_tensor(tmp_path, fmt):
    _write(fmt, tmp_path)
    _edit_tensors(tmp_path / WEIGHTS[fmt], lambda t: t.pop(KEYS[fmt]))
    with pytest.raises(ValueError, match=rf"{WEIGHTS[fmt]}: missing tensor '{KEYS[fmt]}'"):
        LOADERS[fmt](tmp_path)


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_wrong_shape(tmp_path, fmt):
    _write(fmt, tmp_path)
    _edit_tensors(tmp_path / WEIGHTS[fmt], lambda t: t.update({"W_dec": torch.zeros(M, D + 1)}))
    with pytest.raises(ValueError, match=rf"{WEIGHTS[fmt]}: tensor 'W_dec' has shape \[{M}, {D + 1}\], "
                                         rf"expected \[{M}, {D}\]"):
        LOADERS[fmt](tmp_path)


def test_saelens_w_enc_not_transposed(tmp_path):
    _write("saelens", tmp_path)
    _edit_tensors(tmp_path / WEIGHTS["saelens"], lambda t: t.update({"W_enc": t["W_enc"].T.contiguous()}))
    with pytest.raises(ValueError, match=rf"tensor 'W_enc' has shape \[{M}, {D}\], expected \[{D}, {M}\]"):
        load_saelens(tmp_path)


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_unexpected_tensor(tmp_path, fmt):
    _write(fmt, tmp_path)
    _edit_tensors(tmp_path / WEIGHTS[fmt], lambda t: t.update({"W_skip": torch.zeros(D, D)}))
    with pytest.raises(ValueError, match=rf"{WEIGHTS[fmt]}: unexpected tensor 'W_skip'"):
        LOADERS[fmt](tmp_path)


@pytest.mark.parametrize("fmt, key, value, message", [
    ("saelens", "architecture", "gated", r"unknown architecture 'gated' under key 'architecture'"),
    ("saelens", "d_sae", "48", r"key 'd_sae' must be an integer"),
    ("saelens", "k", M + 1, rf"key 'k' is {M + 1}, larger than d_sae"),
    ("saelens", "normalize_activations", "constant_norm_rescale", r"key 'normalize_activations'"),
    ("saelens", "apply_b_dec_to_input", "yes", r"key 'apply_b_dec_to_input' must be true or false"),
    ("saelens", "dtype", "float8", r"key 'dtype' is 'float8'"),
    ("sparsify", "activation", "groupmax", r"key 'activation' is 'groupmax'"),
    ("sparsify", "skip_connection", True, r"key 'skip_connection' is true"),
    ("sparsify", "d_in", 0, r"key 'd_in' must be an integer >= 1"),
])
def test_bad_config(tmp_path, fmt, key, value, message):
    _write(fmt, tmp_path)
    _edit_cfg(tmp_path / "cfg.json", lambda c: c.update({key: value}))
    with pytest.raises(ValueError, match=r"cfg\.json: " + message):
        LOADERS[fmt](tmp_path)


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_missing_key(tmp_path, fmt):
    _write(fmt, tmp_path)
    _edit_cfg(tmp_path / "cfg.json", lambda c: c.pop("d_in"))
    with pytest.raises(ValueError, match=r"cfg\.json: missing key 'd_in'"):
        LOADERS[fmt](tmp_path)


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_missing_cfg(tmp_path, fmt):
    _write(fmt, tmp_path)
    (tmp_path / "cfg.json").unlink()
    with pytest.raises(ValueError, match=rf"cfg\.json: missing \(the directory holds \['{WEIGHTS[fmt]}'\]\)"):
        LOADERS[fmt](tmp_path)


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_corrupt_files(tmp_path, fmt):
    _write(fmt, tmp_path)
    (tmp_path / WEIGHTS[fmt]).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(ValueError, match=rf"{WEIGHTS[fmt]}: cannot be read as safetensors"):
        LOADERS[fmt](tmp_path)
    (tmp_path / "cfg.json").write_text("{truncated")
    with pytest.raises(ValueError, match=r"cfg\.json: not valid JSON"):
        LOADERS[fmt](tmp_path)


def test_saelens_zero_decoder_row_cannot_be_folded(tmp_path):
    _write("saelens", tmp_path)
    _edit_tensors(tmp_path / WEIGHTS["saelens"], lambda t: t["W_dec"][4].zero_())
    _edit_cfg(tmp_path / "cfg.json", lambda c: c.update(rescale_acts_by_decoder_norm=True))
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors: tensor 'W_dec' row 4 has norm 0"):
        load_saelens(tmp_path)


def test_detect(tmp_path):
    _write("saekit", tmp_path / "a")
    _write("saelens", tmp_path / "b")
    _write("sparsify", tmp_path / "c")
    assert [detect(tmp_path / s) for s in "abc"] == ["saekit", "saelens", "sparsify"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "weights.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"d: not a saekit .* checkpoint; found \['weights\.pt'\]"):
        load(tmp_path / "d")
    (tmp_path / "a" / "cfg.json").write_text("{truncated")  # unrecognised: saekit's loader says why
    with pytest.raises(ValueError, match=r"a.cfg\.json: not valid JSON"):
        load(tmp_path / "a")


def test_sparsify_run_needs_a_hookpoint(tmp_path):
    for name in ("layers.1", "layers.0/seed1"):
        _write("sparsify", tmp_path / name)
    with pytest.raises(ValueError, match=r"2 hookpoints \['layers\.0/seed1', 'layers\.1'\]; pass hookpoint="):
        load(tmp_path)
    with pytest.raises(ValueError, match=r"layers\.7: no such hookpoint directory"):
        load(tmp_path, hookpoint="layers.7")
    assert load(tmp_path, hookpoint="layers.0/seed1").cfg.extra["sparsify"]["hookpoint"] == "layers.0/seed1"


# Exact translations and round trips, checked against saekit itself.

def test_saelens_without_pre_bias_is_folded(tmp_path):
    """apply_b_dec_to_input false: pre = x @ W_enc + b_enc, folded into saekit's b_enc."""
    sae = _write("saelens", tmp_path)
    _edit_cfg(tmp_path / "cfg.json", lambda c: c.update(apply_b_dec_to_input=False))
    loaded = load_saelens(tmp_path)
    x = inputs(D)
    with torch.no_grad():
        pre = x @ sae.W_enc.T + sae.b_enc
        top = pre.topk(K, dim=-1)
        expected = torch.zeros(len(x), M).scatter(-1, top.indices, top.values.relu())
        assert_close(saekit_dense(loaded, x), expected)
        assert_close(loaded(x).x_hat, expected @ sae.W_dec + sae.b_dec)


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_round_trip(tmp_path, fmt, dtype):
    sae = GradientTopKSAE(D, M, K, beta=0.5, grad_norm="none", k_aux=7, dtype=dtype)
    set_weights(sae, random_weights(D, M))
    sae.cfg.extra = {"model": "tiny", "hook": "layers.1"}
    _write(fmt, tmp_path, sae)
    loaded = load(tmp_path)
    assert type(loaded) is GradientTopKSAE and loaded.cfg == sae.cfg and loaded.W_enc.dtype == dtype
    for name, p in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name
    assert load(tmp_path, dtype=torch.float32).W_enc.dtype == torch.float32


def test_saekit_extra_survives_its_own_round_trip(tmp_path):
    sae = TopKSAE(D, M, K)
    sae.cfg.extra = {"model": "tiny"}
    sae.save(tmp_path)
    assert load(tmp_path).cfg.extra == {"model": "tiny"}


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_load_onto_cuda(tmp_path, fmt):
    sae = _write(fmt, tmp_path)
    loaded = load(tmp_path, device="cuda")
    x = inputs(D)
    assert loaded.W_enc.is_cuda
    assert_close(loaded(x.cuda()).x_hat.cpu(), sae(x).x_hat.detach())
