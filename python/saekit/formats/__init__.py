"""Other libraries' SAE checkpoints: import and export with their conventions translated, so that
the loaded SAE gives the same outputs.

- ``load(path)``: a saekit, SAELens or sparsify checkpoint, recognised from its files.
- ``load_saelens`` / ``save_saelens``: SAELens (``sae_weights.safetensors`` + ``cfg.json``).
- ``load_sparsify`` / ``save_sparsify``: EleutherAI sparsify (``sae.safetensors`` + ``cfg.json``,
  one directory per hookpoint).
- ``save(sae, path, format=...)``: write any of the three.

Every loader checks the whole checkpoint before building anything and raises a ValueError naming
the file and the key; none of them unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from saekit.formats.saelens import load_saelens, save_saelens
from saekit.formats.sparsify import (
    hookpoints,
    is_sparsify_dir,
    load_sparsify,
    save_sparsify,
)

FORMATS = ("saekit", "saelens", "sparsify")

__all__ = [
    "FORMATS",
    "detect",
    "hookpoints",
    "load",
    "load_saelens",
    "load_sparsify",
    "save",
    "save_saelens",
    "save_sparsify",
]


def _saekit_format(cfg_file: Path) -> bool:
    try:
        raw = json.loads(cfg_file.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and str(raw.get("format", "")).startswith("saekit")


def detect(path) -> str:
    """The format of the checkpoint directory ``path``: "saekit", "saelens" or "sparsify".

    A sparsify run directory (one subdirectory per hookpoint) counts as "sparsify". ValueError
    listing the files found when none matches.
    """
    from saekit import io

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a directory (a checkpoint is a directory of safetensors + cfg.json)")
    if (path / "sae_weights.safetensors").is_file():
        return "saelens"
    if _saekit_format(path / io.CONFIG_FILE):  # saekit's own, sharded ones included (io.load_sae reads both)
        return "saekit"
    if is_sparsify_dir(path):
        return "sparsify"
    if (path / io.WEIGHTS_FILE).is_file() and (path / io.CONFIG_FILE).is_file():
        return "saekit"  # with a config neither recognises: saekit's loader names what is wrong
    if hookpoints(path):
        return "sparsify"
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    raise ValueError(f"{path}: not a saekit (sae.safetensors + cfg.json with \"format\": \"saekit\"), "
                     f"SAELens (sae_weights.safetensors + cfg.json) or sparsify (sae.safetensors + cfg.json, "
                     f"or one such directory per hookpoint) checkpoint; found {found}")


def load(path, *, device=None, dtype=None, backend: str = "auto", hookpoint: str | None = None,
         norm_scaling_factor=None):
    """Load the SAE checkpoint in directory ``path``, whichever of the three formats it has.

    Returns a TopKSAE or GradientTopKSAE (W_enc [M, d], b_enc [M], W_dec [M, d], b_dec [d]).
    ``hookpoint`` picks one SAE of a sparsify run; ``norm_scaling_factor`` is SAELens'
    (see load_saelens). Foreign checkpoints come back in eval mode, saekit's as saved.
    """
    from saekit.io import load_sae

    fmt = detect(path)
    if hookpoint is not None and fmt != "sparsify":
        raise ValueError(f"{path}: hookpoint= applies to sparsify runs, this is a {fmt} checkpoint")
    if norm_scaling_factor is not None and fmt != "saelens":
        raise ValueError(f"{path}: norm_scaling_factor= applies to SAELens checkpoints, this is a {fmt} checkpoint")
    common = {"device": device, "dtype": dtype, "backend": backend}
    if fmt == "saelens":
        return load_saelens(path, norm_scaling_factor=norm_scaling_factor, **common)
    if fmt == "sparsify":
        return load_sparsify(path, hookpoint=hookpoint, **common)
    return load_sae(path, **common)


def save(sae, path, *, format: str = "saekit") -> Path:
    """Write ``sae`` into directory ``path`` in ``format`` ("saekit", "saelens" or "sparsify")."""
    from saekit.io import save_sae

    writers = {"saekit": save_sae, "saelens": save_saelens, "sparsify": save_sparsify}
    if format not in writers:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    return writers[format](sae, path)
