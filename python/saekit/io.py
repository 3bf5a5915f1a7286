"""Saving and loading saekit SAEs: ``sae.safetensors`` + ``cfg.json`` in a directory, never pickle.

Loading checks every file, key, shape and the architecture before building the module, so a
bad checkpoint raises a ValueError naming the file and the key and nothing is partly loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "cfg.json"
FORMAT = "saekit"


def _state_shapes(cfg) -> dict:
    M, d = cfg.n_latents, cfg.d_in
    shapes = {"W_enc": (M, d), "b_enc": (M,), "W_dec": (M, d), "b_dec": (d,)}
    if cfg.architecture == "batch_topk":
        shapes["activation.threshold"] = ()
    return shapes


def save_sae(sae, path) -> Path:
    """Write ``sae`` (a TopKSAE or GradientTopKSAE) into directory ``path``; returns the path.

    Files are written to temporary names and renamed, so a crash never leaves a half-written
    checkpoint under the final names.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in sae.state_dict().items()
               if name in _state_shapes(sae.cfg)}
    cfg = {"format": FORMAT, **sae.cfg.to_dict(), "dtype": str(sae.W_enc.dtype).removeprefix("torch.")}
    return write_checkpoint(path, tensors, cfg)


def write_checkpoint(path: Path, tensors: dict, cfg: dict, *, weights_file: str = WEIGHTS_FILE,
                     config_file: str = CONFIG_FILE) -> Path:
    """Write ``tensors`` (name -> CPU tensor) as safetensors and ``cfg`` as JSON into directory
    ``path``, each to a temporary name first and then renamed, so that a crash never leaves a
    half-written file under the final names. Returns ``path``."""
    from safetensors.torch import save_file

    tmp_weights, tmp_cfg = path / (weights_file + ".tmp"), path / (config_file + ".tmp")
    save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
    tmp_cfg.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp_weights, path / weights_file)
    os.replace(tmp_cfg, path / config_file)
    return path


def read_config(path) -> dict:
    """The parsed cfg.json of checkpoint directory ``path`` (ValueError naming the file if bad)."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise ValueError(f"{file}: missing (a saekit checkpoint directory holds {WEIGHTS_FILE} and {CONFIG_FILE})")
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def read_tensors(file: Path, expected: dict) -> dict:
    """Tensors of safetensors ``file`` with exactly the keys and shapes of ``expected``
    ({name: shape}); ValueError naming the file and the key otherwise."""
    from safetensors import safe_open

    if not file.is_file():
        raise ValueError(f"{file}: missing")
    try:
        with safe_open(str(file), framework="pt") as f:
            keys = set(f.keys())
            missing = [k for k in expected if k not in keys]
            if missing:
                raise ValueError(f"{file}: missing tensor {missing[0]!r} (has {sorted(keys)})")
            tensors = {k: f.get_tensor(k) for k in expected}
    except ValueError:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{file}: cannot be read as safetensors ({e})") from None
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise ValueError(f"{file}: tensor {name!r} has shape {list(tensors[name].shape)}, expected {list(shape)}")
        if not tensors[name].is_floating_point():
            raise ValueError(f"{file}: tensor {name!r} has dtype {tensors[name].dtype}, expected a float dtype")
    return tensors


def build_sae(cfg, *, device=None, dtype=None, backend: str = "auto"):
    """An SAE module of the architecture named by ``cfg`` (an SAEConfig), freshly initialised."""
    from saekit.nn.sae import GradientTopKSAE, TopKSAE

    common = dict(k_aux=cfg.k_aux, backend=backend, device=device, dtype=dtype)
    if cfg.architecture == "gradient_topk":
        return GradientTopKSAE(cfg.d_in, cfg.n_latents, cfg.k, beta=cfg.beta, grad_norm=cfg.grad_norm, **common)
    return TopKSAE(cfg.d_in, cfg.n_latents, cfg.k, activation=cfg.architecture, **common)


def config_from_dict(raw: dict, source) -> "SAEConfig":  # noqa: F821
    """An SAEConfig from a cfg.json dict; ValueError naming ``source`` and the key when invalid."""
    from saekit.nn.sae import ARCHITECTURES, SAEConfig

    arch = raw.get("architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"{source}: unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    for key in ("d_in", "n_latents", "k"):
        if key not in raw:
            raise ValueError(f"{source}: missing key {key!r}")
    fields = {k: raw[k] for k in ("d_in", "n_latents", "k", "architecture", "k_aux", "beta", "grad_norm") if k in raw}
    try:
        return SAEConfig(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from None


def load_sae(path, *, device=None, dtype=None, backend: str = "auto"):
    """Load the SAE saved in directory ``path`` by save_sae (or, stitched into one module, the
    per-shard checkpoint of saekit.distributed.save_sharded).

    Args:
        device, dtype: where and in which dtype to build it (default: CPU, the saved dtype).
        backend: passed to the module's ops.
    Raises:
        ValueError naming the file and the key for a missing file, tensor or key, a wrong
        shape, or an unknown architecture; nothing is built until everything has been checked.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    path = Path(path)
    raw = read_config(path)
    if raw.get("format") == "saekit-sharded":  # per-shard files: stitched by saekit.distributed
        from saekit.distributed.checkpoint import load_unsharded

        return load_unsharded(path, device=device, dtype=dtype, backend=backend)
    cfg = config_from_dict(raw, path / CONFIG_FILE)
    tensors = read_tensors(path / WEIGHTS_FILE, _state_shapes(cfg))
    if dtype is None:
        dtype = tensors["W_enc"].dtype
    sae = build_sae(cfg, device=device, dtype=dtype, backend=backend)
    if isinstance(raw.get("extra"), dict):
        sae.cfg.extra = dict(raw["extra"])  # free-form metadata (model, hook, ...), kept as saved
    with torch.no_grad():
        for name, t in tensors.items():
            target = sae.get_buffer(name) if name == "activation.threshold" else sae.get_parameter(name)
            target.copy_(t)
    return sae
