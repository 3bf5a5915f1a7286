"""EleutherAI sparsify checkpoints (``sae.safetensors`` + ``cfg.json``, one directory per
hookpoint) to and from saekit SAEs.

sparsify's conventions and their translation:
- The encoder is an ``nn.Linear``: ``encoder.weight`` [M, d] is saekit's W_enc, ``encoder.bias``
  its b_enc; ``W_dec`` [M, d] and ``b_dec`` [d] are the same. b_dec is subtracted before
  encoding (the pre-encoder bias), as in saekit.
- "topk" selects among relu(pre) and saekit among pre: the two differ only in which zero-valued
  latents fill rows with fewer than k positive ones, so the nonzero codes and x_hat agree.
- ``num_latents: 0`` means d_in * expansion_factor.
- ``normalize_decoder`` and ``multi_topk`` only change training: loading ignores them (the stored
  weights are used as they are); exports set normalize_decoder from whether the rows have unit norm.
- Unsupported, with a ValueError naming the file and the key: "groupmax" activation,
  ``skip_connection`` (a W_skip term saekit has no place for) and ``transcode`` (a transcoder
  predicts another module's output, it is not an autoencoder).
"""

from __future__ import annotations

import json
from pathlib import Path

from saekit.formats._common import (
    SAEKIT_KEY,
    assemble,
    get_bool,
    get_int,
    is_unit_norm,
    read_exact,
    read_json,
    restore_fields,
    saekit_fields,
)
from saekit.io import write_checkpoint

WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "cfg.json"


def is_sparsify_dir(path: Path) -> bool:
    """Whether ``path`` holds one sparsify SAE (cfg.json written by sparsify, sae.safetensors)."""
    if not ((path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()):
        return False
    try:
        raw = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("format") != "saekit" and "d_in" in raw and (
        "num_latents" in raw or "expansion_factor" in raw)


def hookpoints(path) -> list[str]:
    """The hookpoints under a sparsify run directory ``path``: the relative paths (such as
    "layers.3" or "layers.3/seed1") of the subdirectories holding one SAE each, sorted."""
    path = Path(path)
    found = [p for p in path.rglob(CONFIG_FILE) if p.parent != path and is_sparsify_dir(p.parent)]
    return sorted(p.parent.relative_to(path).as_posix() for p in found)


def resolve(path, hookpoint: str | None) -> tuple[Path, str | None]:
    """(directory of one SAE, its hookpoint or None): ``path`` itself, or ``path / hookpoint``,
    or the only hookpoint of a run directory. A run directory with several hookpoints and no
    ``hookpoint`` raises a ValueError listing them."""
    path = Path(path)
    if hookpoint is not None:
        target = path / hookpoint
        if not target.is_dir():
            raise ValueError(f"{target}: no such hookpoint directory (hookpoints here: {hookpoints(path)})")
        return target, hookpoint
    if (path / CONFIG_FILE).is_file() or not path.is_dir():
        return path, None
    names = hookpoints(path)
    if len(names) == 1:
        return path / names[0], names[0]
    if names:
        raise ValueError(f"{path}: a sparsify run with {len(names)} hookpoints {names}; "
                         "pass hookpoint= to choose one")
    return path, None  # read_json names the missing cfg.json


def load_sparsify(path, *, hookpoint: str | None = None, device=None, dtype=None, backend: str = "auto"):
    """Load a sparsify SparseCoder checkpoint as a saekit TopKSAE (in eval mode).

    Args:
        path: the directory of one SAE (``sae.safetensors`` + ``cfg.json``), or a sparsify run
            directory with one subdirectory per hookpoint together with ``hookpoint``.
        device, dtype: where and in which dtype to build it (default: CPU, the stored dtype).
        backend: passed to the module's ops.
    Returns:
        TopKSAE with W_enc [M, d] = encoder.weight, b_enc [M] = encoder.bias, W_dec [M, d],
        b_dec [d]; its x_hat and nonzero code equal sparsify's on the same inputs.
    Raises:
        ValueError naming the file and the key for a missing file, key or tensor, a wrong shape
        or an unsupported setting; nothing is built before every check has passed.
    """
    path, hookpoint = resolve(path, hookpoint)
    cfg_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    raw = read_json(cfg_file)
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise ValueError(f"{cfg_file}: key 'activation' is {activation!r}; saekit loads sparsify's 'topk' only")
    for key in ("skip_connection", "transcode"):
        if get_bool(raw, key, cfg_file, default=False):
            what = "a linear skip connection (W_skip)" if key == "skip_connection" else "a transcoder"
            raise ValueError(f"{cfg_file}: key {key!r} is true: {what} cannot be expressed as a saekit SAE")
    get_bool(raw, "normalize_decoder", cfg_file, default=True)  # training-only settings: validated,
    multi_topk = get_bool(raw, "multi_topk", cfg_file, default=False)  # the weights are used as stored
    d = get_int(raw, "d_in", cfg_file)
    M = get_int(raw, "num_latents", cfg_file, default=0, minimum=0)
    if M == 0:
        M = d * get_int(raw, "expansion_factor", cfg_file, default=32)
    k = get_int(raw, "k", cfg_file, default=32)
    if k > M:
        raise ValueError(f"{cfg_file}: key 'k' is {k}, larger than the {M} latents")

    shapes = {"encoder.weight": (M, d), "encoder.bias": (M,), "W_dec": (M, d), "b_dec": (d,)}
    t, stored_dtype = read_exact(weights_file, shapes, architecture="topk")
    fields = {"d_in": d, "n_latents": M, "k": k, "architecture": "topk"}
    fields |= restore_fields(raw.get(SAEKIT_KEY), cfg_file, architecture="topk")
    kept = {"multi_topk": True} if multi_topk else {}  # written back on export
    if hookpoint is not None:
        kept["hookpoint"] = hookpoint
    if kept:
        fields["extra"] = {**fields.get("extra", {}), "sparsify": kept}
    tensors = {"W_enc": t["encoder.weight"], "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    return assemble(fields, tensors, file=weights_file, stored_dtype=stored_dtype, device=device, dtype=dtype,
                    backend=backend)


def save_sparsify(sae, path, *, hookpoint: str | None = None) -> Path:
    """Write ``sae`` as a sparsify SparseCoder checkpoint into ``path`` (or ``path / hookpoint``,
    sparsify's layout for a run); returns the SAE's directory.

    TopK and gradient-TopK SAEs are written as activation "topk" (a g-SAE without a gradient
    selects as TopK does); ``normalize_decoder`` is true when every decoder row has unit norm.
    saekit's own fields (k_aux, beta, grad_norm, cfg.extra) go under the config's "saekit" key,
    which sparsify ignores. BatchTopK SAEs have no sparsify equivalent: ValueError.
    """
    cfg = sae.cfg
    if cfg.architecture == "batch_topk":
        raise ValueError("save_sparsify: a BatchTopK SAE (architecture 'batch_topk') has no sparsify equivalent "
                         "(sparsify's activations are 'topk' and 'groupmax'); use save_saelens")
    path = Path(path) / hookpoint if hookpoint is not None else Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = {"encoder.weight": sae.W_enc, "encoder.bias": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    weights = {name: w.detach().contiguous().cpu() for name, w in weights.items()}
    kept = cfg.extra.get("sparsify") or {}
    out = {"activation": "topk", "expansion_factor": max(1, cfg.n_latents // cfg.d_in),
           "normalize_decoder": is_unit_norm(sae.W_dec.detach()), "num_latents": cfg.n_latents, "k": cfg.k,
           "multi_topk": bool(kept.get("multi_topk", False)), "skip_connection": False, "transcode": False,
           "d_in": cfg.d_in, SAEKIT_KEY: saekit_fields(sae)}
    return write_checkpoint(path, weights, out, weights_file=WEIGHTS_FILE, config_file=CONFIG_FILE)
