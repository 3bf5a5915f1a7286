"""SAELens checkpoints (``sae_weights.safetensors`` + ``cfg.json``) to and from saekit SAEs.

SAELens' conventions and their exact translation:
- ``W_enc`` is stored [d, M]: transposed to saekit's [M, d] (and back on export).
- "topk": TopK of the pre-activations, then ReLU, as saekit does.
- ``apply_b_dec_to_input: false`` (no pre-encoder bias): folded into the encoder bias,
  b_enc' = b_enc + W_enc @ b_dec.
- ``rescale_acts_by_decoder_norm: true`` (pre scaled by each decoder row's norm, decoder rows
  divided by it): folded, W_enc_i *= n_i, b_enc_i *= n_i, W_dec_i /= n_i.
- ``normalize_activations: "expected_average_only_in"`` (the SAE expects inputs times a
  dataset-wide factor s that the file does not hold): folded when ``norm_scaling_factor=s`` is
  given, W_enc *= s, W_dec /= s, b_dec /= s, so the SAE takes raw activations; an error otherwise.
  Per-row normalisations ("constant_norm_rescale", "layer_norm") are not linear: an error.
- BatchTopK SAEs, saved by SAELens for inference as "jumprelu" with one threshold for every
  latent (or as "batchtopk" training checkpoints with ``topk_threshold``): a saekit TopKSAE with
  activation="batch_topk" whose eval mode keeps the activations above that threshold.
- ``reshape_activations: "hook_z"``: saekit takes the flattened [..., n_heads * d_head] input;
  the setting and the hook metadata are kept in ``cfg.extra["saelens"]`` and written back.
Other architectures (standard, gated, jumprelu with per-latent thresholds, transcoders, ...)
raise a ValueError naming the file and the key.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from saekit.formats._common import (
    SAEKIT_KEY,
    assemble,
    fold_decoder_norm,
    fold_missing_pre_bias,
    get_bool,
    get_int,
    read_exact,
    read_json,
    restore_fields,
    saekit_fields,
)
from saekit.io import write_checkpoint

WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"
LOADABLE = ("topk", "batchtopk", "jumprelu (from BatchTopK training: one threshold for all latents)")
# SAELens reads configs without a version as pre-6.0 ones; exports use the 6.x layout.
FORMAT_VERSION = "6.0.0"
# Metadata not carried over: the writer's versions (an export states its own) and saekit's fields.
_NOT_KEPT = ("sae_lens_version", "sae_lens_training_version", SAEKIT_KEY)


def _architecture(raw: dict, file) -> str:
    """The architecture, reading pre-6.0 configs (activation_fn "topk" with its k) too."""
    arch = raw.get("architecture")
    if arch is None:
        fn = raw.get("activation_fn", raw.get("activation_fn_str", "relu"))
        kwargs = raw.get("activation_fn_kwargs") or {}
        if fn == "topk" and "k" in kwargs:
            raw["k"] = kwargs["k"]
            return "topk"
        raise ValueError(f"{file}: unknown architecture (no 'architecture' key; activation_fn {fn!r}); "
                         f"saekit loads {', '.join(LOADABLE)}")
    if arch not in ("topk", "batchtopk", "jumprelu"):
        raise ValueError(f"{file}: unknown architecture {arch!r} under key 'architecture' "
                         f"(saekit loads {', '.join(LOADABLE)})")
    return arch


def _metadata(raw: dict, file) -> dict:
    meta = raw.get("metadata", {})
    if not isinstance(meta, dict):
        raise ValueError(f"{file}: key 'metadata' must be an object, got {meta!r}")
    if "metadata" not in raw:  # pre-6.0 configs keep the hook fields at the top level
        meta = {k: raw[k] for k in ("model_name", "hook_name", "hook_point", "hook_layer", "hook_head_index",
                                    "context_size", "prepend_bos", "dataset_path") if k in raw}
    return meta


def _k(raw: dict, arch: str, meta: dict, file) -> int:
    if arch != "jumprelu":
        return get_int(raw, "k", file)
    details = meta.get("training_architecture_details") or {}
    if meta.get("training_architecture") != "batchtopk" or "k" not in details:
        raise ValueError(f"{file}: architecture 'jumprelu' is loaded only when saved from BatchTopK training "
                         f"(key 'metadata.training_architecture' 'batchtopk' with "
                         f"'metadata.training_architecture_details.k'); this one has "
                         f"training_architecture {meta.get('training_architecture')!r}")
    return get_int(details, "k", f"{file} (metadata.training_architecture_details)")


def _check_normalization(raw: dict, file, norm_scaling_factor) -> float | None:
    mode = raw.get("normalize_activations", "none")
    if mode is False or mode is None:
        mode = "none"
    if mode is True:
        mode = "expected_average_only_in"
    if mode == "none":
        if norm_scaling_factor is not None:
            raise ValueError(f"{file}: norm_scaling_factor given but key 'normalize_activations' is 'none'")
        return None
    if mode == "expected_average_only_in":
        if norm_scaling_factor is None:
            raise ValueError(f"{file}: key 'normalize_activations' is 'expected_average_only_in': the SAE expects "
                             "its inputs multiplied by a dataset-wide factor that this file does not hold; pass "
                             "norm_scaling_factor= (SAELens' pretrained_saes.yaml lists it; training checkpoints "
                             "keep it in activation_scaler.json) to fold it into the weights")
        s = float(norm_scaling_factor)
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"norm_scaling_factor must be a positive finite number, got {norm_scaling_factor!r}")
        return s
    raise ValueError(f"{file}: key 'normalize_activations' is {mode!r}, which saekit cannot express "
                     "(supported: 'none', and 'expected_average_only_in' with norm_scaling_factor=)")


def load_saelens(path, *, device=None, dtype=None, backend: str = "auto", norm_scaling_factor=None):
    """Load the SAELens SAE in directory ``path`` as a saekit TopKSAE (in eval mode).

    Args:
        path: a directory holding ``sae_weights.safetensors`` and ``cfg.json``.
        device, dtype: where and in which dtype to build it (default: CPU, the config's dtype as
            SAELens uses it, float64 giving float32).
        backend: passed to the module's ops.
        norm_scaling_factor: for ``normalize_activations: "expected_average_only_in"``, the factor
            the SAE's inputs were multiplied by; folded into the weights.
    Returns:
        TopKSAE with W_enc [M, d] (the stored [d, M] transposed), b_enc [M], W_dec [M, d],
        b_dec [d], whose encode/decode give SAELens' feature activations and reconstructions
        (for the raw activations when a scaling factor was folded). A BatchTopK SAE is a
        TopKSAE(activation="batch_topk") with its threshold.
    Raises:
        ValueError naming the file and the key for a missing file, key or tensor, a wrong shape,
        an unknown architecture or a convention saekit cannot express; nothing is built before
        every check has passed.
    """
    path = Path(path)
    cfg_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    raw = read_json(cfg_file)
    arch = _architecture(raw, cfg_file)
    meta = _metadata(raw, cfg_file)
    d, M = get_int(raw, "d_in", cfg_file), get_int(raw, "d_sae", cfg_file)
    k = _k(raw, arch, meta, cfg_file)
    if k > M:
        raise ValueError(f"{cfg_file}: key 'k' is {k}, larger than d_sae = {M}")
    pre_bias = get_bool(raw, "apply_b_dec_to_input", cfg_file, default=True)
    rescale = arch != "jumprelu" and get_bool(raw, "rescale_acts_by_decoder_norm", cfg_file, default=False)
    scale = _check_normalization(raw, cfg_file, norm_scaling_factor)
    reshape = raw.get("reshape_activations", "none")
    if reshape not in ("none", "hook_z"):
        raise ValueError(f"{cfg_file}: key 'reshape_activations' is {reshape!r} (known: 'none', 'hook_z')")

    shapes = {"W_enc": (d, M), "b_enc": (M,), "W_dec": (M, d), "b_dec": (d,)}
    if arch == "jumprelu":
        shapes["threshold"] = (M,)
    elif arch == "batchtopk":
        shapes["topk_threshold"] = ()
    t, stored_dtype = read_exact(weights_file, shapes, architecture=arch)
    threshold = None
    if arch == "jumprelu":
        threshold = float(t["threshold"][0])
        if not bool((t["threshold"] == t["threshold"][0]).all()):
            raise ValueError(f"{weights_file}: tensor 'threshold' differs between latents; saekit's BatchTopK "
                             "has one threshold for all latents (per-latent JumpReLU is not supported)")
    elif arch == "batchtopk":
        threshold = float(t["topk_threshold"])

    W_enc, b_enc, W_dec, b_dec = t["W_enc"].T, t["b_enc"], t["W_dec"], t["b_dec"]
    if rescale:
        W_enc, b_enc, W_dec = fold_decoder_norm(W_enc, b_enc, W_dec, weights_file)
    if not pre_bias:
        b_enc = fold_missing_pre_bias(W_enc, b_enc, b_dec)
    if scale is not None:
        W_enc, W_dec, b_dec = W_enc * scale, W_dec / scale, b_dec / scale

    fields = {"d_in": d, "n_latents": M, "k": k, "architecture": "topk" if arch == "topk" else "batch_topk"}
    fields |= restore_fields(meta.get(SAEKIT_KEY), cfg_file, architecture=fields["architecture"])
    kept = {"metadata": {key: v for key, v in meta.items() if key not in _NOT_KEPT}}
    if reshape != "none":
        kept["reshape_activations"] = reshape
    if kept["metadata"] or reshape != "none":
        fields["extra"] = {**fields.get("extra", {}), "saelens": kept}
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    return assemble(fields, tensors, file=weights_file, stored_dtype=_cfg_dtype(raw, cfg_file) or stored_dtype,
                    device=device, dtype=dtype, backend=backend, threshold=threshold)


def _cfg_dtype(raw: dict, file):
    """The dtype cfg.json asks for (SAELens casts the weights to it), None when absent."""
    name = raw.get("dtype")
    if name is None:
        return None
    dtypes = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
              "bfloat16": torch.bfloat16}
    dtype = dtypes.get(str(name).removeprefix("torch."))
    if dtype is None:
        raise ValueError(f"{file}: key 'dtype' is {name!r} (known: {', '.join(dtypes)})")
    return dtype


def save_saelens(sae, path) -> Path:
    """Write ``sae`` in SAELens' format into directory ``path``; returns the path.

    TopK and gradient-TopK SAEs become architecture "topk" (a g-SAE without a gradient selects
    as TopK does); a BatchTopK SAE becomes "jumprelu" with its threshold for every latent, as
    SAELens saves BatchTopK SAEs. W_enc is written [d, M]; the pre-encoder bias is on, no
    decoder-norm rescaling, no activation normalisation. saekit's own fields (k_aux, beta,
    grad_norm, cfg.extra) go into the config's metadata, so load_saelens gives the module back.
    Files are written to temporary names and renamed.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg, M = sae.cfg, sae.n_latents
    weights = {"W_enc": sae.W_enc.detach().T, "b_enc": sae.b_enc.detach(), "W_dec": sae.W_dec.detach(),
               "b_dec": sae.b_dec.detach()}
    kept = cfg.extra.get("saelens") or {}
    metadata = {"sae_lens_version": FORMAT_VERSION, "sae_lens_training_version": FORMAT_VERSION,
                **(kept.get("metadata") or {}), SAEKIT_KEY: saekit_fields(sae)}
    out = {"d_in": cfg.d_in, "d_sae": M, "dtype": str(sae.W_enc.dtype).removeprefix("torch."), "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none",
           "reshape_activations": kept.get("reshape_activations", "none")}
    if cfg.architecture == "batch_topk":
        weights["threshold"] = torch.full((M,), float(sae.activation.threshold), dtype=sae.W_enc.dtype)
        metadata |= {"training_architecture": "batchtopk", "training_architecture_details": {"k": cfg.k}}
        out |= {"architecture": "jumprelu"}
    else:
        out |= {"architecture": "topk", "k": cfg.k, "rescale_acts_by_decoder_norm": False}
    out["metadata"] = metadata
    weights = {name: w.contiguous().cpu() for name, w in weights.items()}
    return write_checkpoint(path, weights, out, weights_file=WEIGHTS_FILE, config_file=CONFIG_FILE)
