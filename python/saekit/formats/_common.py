"""Helpers shared by the SAELens and sparsify converters: reading a foreign cfg.json with errors
that name the file and the key, the exact weight translations, and building the saekit module
once everything has been checked (so a bad checkpoint never leaves a half-loaded SAE)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from saekit.io import build_sae, read_tensors

SAEKIT_KEY = "saekit"  # the key under which exports keep saekit's own fields (architecture, k_aux, ...)
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def read_json(file: Path) -> dict:
    """The JSON object in ``file``; ValueError naming the file when missing or malformed."""
    if not file.is_file():
        found = sorted(p.name for p in file.parent.iterdir()) if file.parent.is_dir() else []
        raise ValueError(f"{file}: missing (the directory holds {found})")
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(raw).__name__}")
    return raw


def get_int(raw: dict, key: str, file, *, default=None, minimum: int = 1) -> int:
    """``raw[key]`` as an int >= minimum (an integral float such as 32.0 is accepted)."""
    value = raw.get(key, default)
    if value is None:
        raise ValueError(f"{file}: missing key {key!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{file}: key {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def get_bool(raw: dict, key: str, file, *, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{file}: key {key!r} must be true or false, got {value!r}")
    return value


def tensor_names(file: Path) -> list[str]:
    """Names of the tensors in safetensors ``file`` (ValueError naming the file if unreadable)."""
    from safetensors import safe_open

    if not file.is_file():
        raise ValueError(f"{file}: missing")
    try:
        with safe_open(str(file), framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{file}: cannot be read as safetensors ({e})") from None


def read_exact(file: Path, expected: dict, *, architecture: str) -> dict:
    """(tensors in float64, the stored dtype of W_dec) of ``file``, which must hold exactly the
    names and shapes of ``expected`` ({name: shape}): a missing, misshapen or unexpected tensor
    raises a ValueError naming the file and the key. Conversions then run in float64."""
    names = tensor_names(file)
    unexpected = sorted(set(names) - set(expected))
    if unexpected:
        raise ValueError(f"{file}: unexpected tensor {unexpected[0]!r} for architecture {architecture!r} "
                         f"(expected {sorted(expected)})")
    tensors = read_tensors(file, expected)
    return {name: t.double() for name, t in tensors.items()}, tensors["W_dec"].dtype


def row_norms(W_dec: torch.Tensor, file, key: str = "W_dec") -> torch.Tensor:
    """[M] norms of the decoder rows; ValueError naming the first zero or non-finite row."""
    norms = W_dec.norm(dim=1)
    bad = (~torch.isfinite(norms)) | (norms == 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"{file}: tensor {key!r} row {i} has norm {float(norms[i])}, which cannot be folded")
    return norms


def fold_decoder_norm(W_enc, b_enc, W_dec, file):
    """Make a "pre * ||W_dec_i||, decode with W_dec_i / ||W_dec_i||" SAE a plain one.

    pre_i * n_i = (x - b_dec) . (n_i W_enc_i) + n_i b_enc_i, and value_i / n_i * W_dec_i =
    value_i * (W_dec_i / n_i): same values, same x_hat. W_enc [M, d], b_enc [M], W_dec [M, d].
    """
    n = row_norms(W_dec, file)
    return W_enc * n[:, None], b_enc * n, W_dec / n[:, None]


def fold_missing_pre_bias(W_enc, b_enc, b_dec):
    """b_enc' [M] such that (x - b_dec) @ W_enc.T + b_enc' == x @ W_enc.T + b_enc: saekit always
    subtracts b_dec first, a peer without that step gets it folded into the encoder bias."""
    return b_enc + W_enc @ b_dec


def is_unit_norm(W_dec: torch.Tensor, tol: float = 1e-3) -> bool:
    """Whether every decoder row has norm 1 (within ``tol``)."""
    return bool(((W_dec.double().norm(dim=1) - 1).abs() <= tol).all())


def saekit_fields(sae) -> dict:
    """saekit's own config fields that a peer format has no place for, kept in its cfg.json
    under "saekit" so that importing an export gives back the same saekit module."""
    cfg = sae.cfg
    fields = {"architecture": cfg.architecture, "k_aux": cfg.k_aux}
    if cfg.architecture == "gradient_topk":
        fields |= {"beta": cfg.beta, "grad_norm": cfg.grad_norm}
    extra = {k: v for k, v in cfg.extra.items() if k not in ("saelens", "sparsify")}
    if extra:
        fields["extra"] = extra
    return fields


def restore_fields(stored, file, *, architecture: str) -> dict:
    """Keyword arguments for SAEConfig from an export's "saekit" entry (empty if absent).

    Only "gradient_topk" may replace the architecture the peer's format implies (a g-SAE's
    inference without a gradient is plain TopK, which is what the peer runs)."""
    if stored is None:
        return {}
    if not isinstance(stored, dict):
        raise ValueError(f"{file}: key {SAEKIT_KEY!r} must be an object, got {stored!r}")
    out = {}
    if stored.get("architecture") == "gradient_topk" and architecture == "topk":
        out["architecture"] = "gradient_topk"
        for key in ("beta", "grad_norm"):
            if key in stored:
                out[key] = stored[key]
    if "k_aux" in stored:
        out["k_aux"] = get_int(stored, "k_aux", f"{file} ({SAEKIT_KEY}.k_aux)", minimum=0)
    if isinstance(stored.get("extra"), dict):
        out["extra"] = dict(stored["extra"])
    return out


def assemble(cfg_fields: dict, tensors: dict, *, file, stored_dtype, device, dtype, backend, threshold=None):
    """Build the saekit SAE described by ``cfg_fields`` (SAEConfig keyword arguments) and copy in
    ``tensors`` (W_enc [M, d], b_enc [M], W_dec [M, d], b_dec [d], float64, already translated).
    dtype: the module's dtype; None gives ``stored_dtype`` (float64 files give float32).

    Everything has been validated before this is called; the module is returned in eval mode
    (a BatchTopK SAE then uses its threshold, as the peers do at inference).
    """
    from saekit.nn.sae import SAEConfig

    extra = cfg_fields.pop("extra", {})
    try:
        cfg = SAEConfig(**cfg_fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: {e}") from None
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{file}: tensor {name!r} has non-finite values after conversion")
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"{file}: threshold {threshold} is not finite")
    if dtype is None:
        dtype = stored_dtype if stored_dtype in SUPPORTED_DTYPES else torch.float32
    sae = build_sae(cfg, device=device, dtype=dtype, backend=backend)
    sae.cfg.extra = extra
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            sae.get_parameter(name).copy_(tensors[name])
        if threshold is not None:
            sae.activation.threshold.fill_(threshold)
    return sae.eval()
