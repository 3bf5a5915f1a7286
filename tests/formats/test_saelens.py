"""SAELens checkpoints against the real library: saved by SAELens, loaded by saekit (and the
reverse), with the same feature activations and reconstructions on the same inputs."""

import warnings

import pytest
import torch
from saekit.formats import load, load_saelens, save_saelens
from saekit.nn import GradientTopKSAE, TopKSAE

from tests.formats.common import (
    assert_close,
    assert_same_code,
    inputs,
    random_weights,
    saekit_dense,
    set_weights,
)

sae_lens = pytest.importorskip("sae_lens")
from sae_lens import SAE
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import (
    TopKSAE as LensTopKSAE,
)
from sae_lens.saes.topk_sae import (
    TopKSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)

D, M, K = 16, 48, 5


def _fill(lens, w):
    """Copy saekit-layout weights into a SAELens SAE (W_enc is [d, M] there)."""
    with torch.no_grad():
        lens.W_enc.copy_(w["W_enc"].T)
        lens.b_enc.copy_(w["b_enc"])
        lens.W_dec.copy_(w["W_dec"])
        lens.b_dec.copy_(w["b_dec"])
    return lens


def _compare(sae, lens, x):
    with torch.no_grad():
        theirs = lens.encode(x)
        assert_same_code(saekit_dense(sae, x), theirs)
        assert_close(sae(x).x_hat, lens.decode(theirs))


def _load_lens(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SAE.load_from_disk(str(path))


@pytest.mark.parametrize("pre_bias", [True, False], ids=["pre_bias", "no_pre_bias"])
@pytest.mark.parametrize("rescale", [False, True], ids=["plain", "rescale_by_dec_norm"])
@pytest.mark.parametrize("unit_norm", [True, False], ids=["unit_dec", "free_dec"])
def test_topk_saved_by_saelens(tmp_path, pre_bias, rescale, unit_norm):
    cfg = TopKSAEConfig(d_in=D, d_sae=M, k=K, apply_b_dec_to_input=pre_bias, rescale_acts_by_decoder_norm=rescale)
    lens = _fill(LensTopKSAE(cfg), random_weights(D, M, unit_norm=unit_norm))
    lens.save_model(tmp_path)
    sae = load_saelens(tmp_path)
    assert type(sae) is TopKSAE and (sae.d_in, sae.n_latents, sae.k) == (D, M, K)
    _compare(sae, lens, inputs(D))
    _compare(sae, lens, inputs(D).reshape(4, 8, D))  # leading dims


def test_topk_training_checkpoint(tmp_path):
    """A training SAE's own save (rescale_acts_by_decoder_norm on by default, weights unfolded)."""
    lens = _fill(TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=M, k=K)), random_weights(D, M, unit_norm=False))
    assert lens.cfg.rescale_acts_by_decoder_norm
    lens.save_model(tmp_path / "train")
    lens.save_inference_model(tmp_path / "inference")
    for sub in ("train", "inference"):
        _compare(load(tmp_path / sub), lens, inputs(D))


def _batchtopk(tmp_path, threshold=0.4):
    cfg = BatchTopKTrainingSAEConfig(d_in=D, d_sae=M, k=K)
    lens = _fill(BatchTopKTrainingSAE(cfg), random_weights(D, M, unit_norm=False))
    lens.topk_threshold = torch.tensor(threshold, dtype=torch.double)
    lens.save_model(tmp_path / "train")
    lens.save_inference_model(tmp_path / "inference")
    return lens


def test_batchtopk_saved_as_jumprelu(tmp_path):
    _batchtopk(tmp_path)
    jumprelu = _load_lens(tmp_path / "inference")
    assert isinstance(jumprelu, JumpReLUSAE)
    sae = load_saelens(tmp_path / "inference")
    assert sae.cfg.architecture == "batch_topk" and sae.k == K and not sae.training
    _compare(sae, jumprelu, inputs(D))


def test_batchtopk_training_checkpoint(tmp_path):
    lens = _batchtopk(tmp_path)
    sae = load_saelens(tmp_path / "train")
    _compare(sae, _load_lens(tmp_path / "inference"), inputs(D))  # eval: the threshold
    sae.train()  # training: BatchTopK over the batch, as SAELens' training SAE
    x = inputs(D, 64)
    with torch.no_grad():
        assert_same_code(saekit_dense(sae, x), lens.encode(x))


def test_expected_average_norm_is_folded(tmp_path):
    cfg = TopKSAEConfig(d_in=D, d_sae=M, k=K, normalize_activations="expected_average_only_in")
    lens = _fill(LensTopKSAE(cfg), random_weights(D, M))
    lens.save_model(tmp_path)
    with pytest.raises(ValueError, match=r"cfg\.json: key 'normalize_activations'.*norm_scaling_factor"):
        load_saelens(tmp_path)
    s = 2.5
    sae = load_saelens(tmp_path, norm_scaling_factor=s)
    x = inputs(D)
    with torch.no_grad():  # the SAE on raw activations = SAELens on scaled ones, unscaled
        theirs = lens.encode(s * x)
        assert_same_code(saekit_dense(sae, x), theirs)
        assert_close(sae(x).x_hat, lens.decode(theirs) / s)


def test_unsupported_architectures_and_settings(tmp_path):
    StandardSAE(StandardSAEConfig(d_in=D, d_sae=M)).save_model(tmp_path / "standard")
    with pytest.raises(ValueError, match=r"standard.cfg\.json: unknown architecture 'standard' under key 'architecture'"):
        load_saelens(tmp_path / "standard")
    jumprelu = JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=M))
    with torch.no_grad():
        jumprelu.threshold.copy_(torch.linspace(0, 1, M))
    jumprelu.cfg.metadata.training_architecture = "batchtopk"
    jumprelu.cfg.metadata.training_architecture_details = {"k": K}
    jumprelu.save_model(tmp_path / "per_latent")
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors: tensor 'threshold' differs between latents"):
        load_saelens(tmp_path / "per_latent")
    LensTopKSAE(TopKSAEConfig(d_in=D, d_sae=M, k=K, normalize_activations="layer_norm")).save_model(tmp_path / "ln")
    with pytest.raises(ValueError, match=r"cfg\.json: key 'normalize_activations' is 'layer_norm'"):
        load_saelens(tmp_path / "ln")


def test_hook_metadata_kept(tmp_path):
    cfg = TopKSAEConfig(d_in=D, d_sae=M, k=K, reshape_activations="hook_z")
    cfg.metadata.hook_name, cfg.metadata.model_name = "blocks.2.attn.hook_z", "gpt2"
    _fill(LensTopKSAE(cfg), random_weights(D, M)).save_model(tmp_path / "a")
    sae = load_saelens(tmp_path / "a")
    assert sae.cfg.extra["saelens"]["metadata"]["hook_name"] == "blocks.2.attn.hook_z"
    save_saelens(sae, tmp_path / "b")
    again = _load_lens(tmp_path / "b")
    assert again.cfg.metadata.hook_name == "blocks.2.attn.hook_z" and again.cfg.metadata.model_name == "gpt2"
    assert again.cfg.reshape_activations == "hook_z"


# The reverse direction: saekit SAEs exported, loaded by SAELens' own loader.

@pytest.mark.parametrize("unit_norm", [True, False], ids=["unit_dec", "free_dec"])
def test_export_topk(tmp_path, unit_norm):
    sae = TopKSAE(D, M, K, k_aux=9)
    set_weights(sae, random_weights(D, M, seed=3, unit_norm=unit_norm))
    save_saelens(sae, tmp_path)
    lens = _load_lens(tmp_path)
    assert isinstance(lens, LensTopKSAE)
    _compare(sae, lens, inputs(D))
    back = load_saelens(tmp_path)
    assert back.cfg == sae.cfg


def test_export_gradient_topk(tmp_path):
    sae = GradientTopKSAE(D, M, K, beta=0.25, grad_norm="none")
    set_weights(sae, random_weights(D, M, seed=4))
    save_saelens(sae, tmp_path)
    _compare(sae, _load_lens(tmp_path), inputs(D))  # without a gradient a g-SAE selects as TopK
    back = load_saelens(tmp_path)
    assert type(back) is GradientTopKSAE and back.cfg == sae.cfg


def test_export_batch_topk(tmp_path):
    sae = TopKSAE(D, M, K, activation="batch_topk")
    set_weights(sae, random_weights(D, M, seed=5))
    sae.activation.threshold.fill_(0.35)
    sae.eval()
    save_saelens(sae, tmp_path)
    lens = _load_lens(tmp_path)
    assert isinstance(lens, JumpReLUSAE)
    _compare(sae, lens, inputs(D))
    assert float(load_saelens(tmp_path).activation.threshold) == pytest.approx(0.35)
