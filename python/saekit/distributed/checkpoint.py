"""Per-shard checkpoints of latent-sharded SAEs, loadable into any number of ranks.

A checkpoint directory holds one safetensors file per latent shard, named by rank and slice,
``shard-001-of-004_latents-256-512.safetensors``, with that slice's rows of W_enc, b_enc and
W_dec, the replicated b_dec and, when an optimizer is given, its state under
``optimizer.<param>.<key>`` (row-sharded like its parameter when it has the parameter's shape).
``cfg.json`` holds the SAEConfig plus the manifest::

    {"format": "saekit-sharded", ..., "shards": [{"file": ..., "rank": 0, "start": 0, "end": 256}, ...],
     "optimizer": {"param_groups": [...]} or null, "extra": {...}}

Saving is atomic per directory: every shard is written into ``<path>.partial``, the first rank
adds cfg.json after a barrier and renames the directory into place, so a job killed mid-save
leaves the previous checkpoint intact and a resumed job loses nothing beyond it. Loading reads
only the rows a rank needs (safetensors slices), so 4 shards load into 2 ranks, 1 rank or a
plain saekit TopKSAE (``load_unsharded``; ``saekit.io.load_sae`` does the same). A plain
saekit checkpoint (sae.safetensors) loads into any number of shards too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from saekit.distributed.comm import group_rank
from saekit.distributed.mesh import shard_bounds
from saekit.distributed.sharded_sae import SHARDED_PARAMETERS, build_sharded
from saekit.distributed.timeouts import check_peers
from saekit.io import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    build_sae,
    config_from_dict,
    read_config,
)
from saekit.io import FORMAT as PLAIN_FORMAT

FORMAT = "saekit-sharded"
PARAMETERS = (*SHARDED_PARAMETERS, "b_dec")


def shard_file(rank: int, world: int, start: int, end: int) -> str:
    """File name of shard ``rank`` of ``world`` holding latents [start, end)."""
    return f"shard-{rank:03d}-of-{world:03d}_latents-{start}-{end}.safetensors"


def _barrier(what: str) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        check_peers(what)


def _optimizer_entries(sae, optimizer) -> tuple[dict, list]:
    """({"optimizer.<param>.<key>": tensor}, JSON param groups naming parameters)."""
    names = {id(p): n for n, p in sae.named_parameters()}
    order = [p for group in optimizer.param_groups for p in group["params"]]
    unknown = [i for i, p in enumerate(order) if id(p) not in names]
    if unknown:
        raise ValueError(f"optimizer holds {len(unknown)} parameter(s) that are not the SAE's")
    state = optimizer.state_dict()
    tensors = {}
    for i, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"optimizer.{names[id(order[i])]}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    groups = []
    for group, saved in zip(optimizer.param_groups, state["param_groups"]):
        g = {k: v for k, v in saved.items() if k != "params"}
        g["params"] = [names[id(p)] for p in group["params"]]
        groups.append(g)
    try:
        json.dumps(groups)
    except TypeError as e:
        raise ValueError(f"optimizer param_groups must be JSON-serialisable to be checkpointed: {e}") from None
    return tensors, groups


def save_sharded(sae, path, *, optimizer=None, data_group=None, extra: dict | None = None) -> Path:
    """Save a ShardedTopKSAE / ShardedGradientTopKSAE (every rank calls this together).

    Args:
        sae: this rank's shard. path: the checkpoint directory (created; replaced if present).
        optimizer: optional; its state is saved per shard next to the parameters.
        data_group: ranks holding copies of the same shard (ctx.data_group): only its first
            rank writes. None: every rank of sae.group writes its own shard.
        extra: JSON-serialisable state to keep in the manifest (step, tokens, data position),
            merged over ``sae.cfg.extra`` (model, hook, ...: kept, as saekit.io.save_sae keeps it).
    Returns the path. Collective over the world when torch.distributed is running.
    """
    from safetensors.torch import save_file

    path = Path(path)
    staging = path.parent / (path.name + ".partial")
    writer = data_group is None or group_rank(data_group) == 0
    main = writer and sae.shard_rank == 0
    if extra is not None:
        json.dumps(extra)  # fail before any file is written
    if main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    _barrier("checkpoint: staging directory created")
    tensors, groups = ({}, None) if optimizer is None else _optimizer_entries(sae, optimizer)
    if writer:
        tensors.update({name: getattr(sae, name).detach().contiguous().cpu() for name in PARAMETERS})
        name = shard_file(sae.shard_rank, sae.shard_world, sae.start, sae.end)
        save_file(tensors, str(staging / name), metadata={"format": "pt"})
    _barrier("checkpoint: shards written")
    if main:
        shards = []
        for r in range(sae.shard_world):
            start, end = shard_bounds(sae.n_latents, sae.shard_world, r)
            shards.append({"file": shard_file(r, sae.shard_world, start, end), "rank": r, "start": start, "end": end})
            if not (staging / shards[-1]["file"]).is_file():
                raise RuntimeError(f"{staging}: shard {r} was not written (is {staging.parent} shared by every node?)")
        cfg = {"format": FORMAT, **sae.cfg.to_dict(), "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
               "shards": shards, "optimizer": None if groups is None else {"param_groups": groups},
               "extra": {**sae.cfg.extra, **(extra or {})}}
        (staging / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
        old = path.parent / (path.name + ".old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
        staging.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    _barrier("checkpoint: directory in place")
    return path


def read_manifest(path) -> dict:
    """cfg.json of a sharded or plain saekit checkpoint, with ``shards`` always present and
    checked: contiguous, covering [0, M), every file present. ValueError naming the problem."""
    path = Path(path)
    raw = read_config(path)
    cfg = config_from_dict(raw, path / CONFIG_FILE)
    fmt = raw.get("format", PLAIN_FORMAT)
    if fmt == PLAIN_FORMAT:
        raw = {**raw, "shards": [{"file": WEIGHTS_FILE, "rank": 0, "start": 0, "end": cfg.n_latents}],
               "optimizer": None, "extra": raw.get("extra") if isinstance(raw.get("extra"), dict) else {}}
    elif fmt != FORMAT:
        raise ValueError(f"{path / CONFIG_FILE}: unknown format {fmt!r} (expected {FORMAT!r} or {PLAIN_FORMAT!r})")
    shards = raw.get("shards")
    if not isinstance(shards, list) or not shards:
        raise ValueError(f"{path / CONFIG_FILE}: 'shards' must be a non-empty list")
    expected_start = 0
    for shard in sorted(shards, key=lambda s: s.get("start", -1)):
        if shard.get("start") != expected_start or not isinstance(shard.get("end"), int) or shard["end"] <= expected_start:
            raise ValueError(f"{path / CONFIG_FILE}: shards must cover latents [0, {cfg.n_latents}) contiguously; "
                             f"found {shard!r} where latent {expected_start} should start")
        if not (path / shard["file"]).is_file():
            raise ValueError(f"{path / shard['file']}: missing (listed in {CONFIG_FILE})")
        expected_start = shard["end"]
    if expected_start != cfg.n_latents:
        raise ValueError(f"{path / CONFIG_FILE}: shards must cover latents [0, {cfg.n_latents}) contiguously; "
                         f"they end at latent {expected_start}")
    raw["shards"] = sorted(shards, key=lambda s: s["start"])
    raw["config"] = cfg
    return raw


def _read(path: Path, manifest: dict, key: str, start: int | None = None, end: int | None = None) -> torch.Tensor:
    """Rows [start, end) of a row-sharded tensor, or (start None) a replicated one from shard 0."""
    from safetensors import safe_open

    pieces = []
    for shard in manifest["shards"]:
        if start is not None and (shard["end"] <= start or shard["start"] >= end):
            continue
        file = path / shard["file"]
        try:
            with safe_open(str(file), framework="pt") as f:
                if key not in f.keys():
                    raise ValueError(f"{file}: missing tensor {key!r}")
                if start is None:
                    return f.get_tensor(key)
                sl = f.get_slice(key)
                rows = shard["end"] - shard["start"]
                if sl.get_shape()[0] != rows:
                    raise ValueError(f"{file}: tensor {key!r} has {sl.get_shape()[0]} rows, expected {rows}")
                pieces.append(sl[max(start, shard["start"]) - shard["start"]:min(end, shard["end"]) - shard["start"]])
        except ValueError:
            raise
        except Exception as e:  # safetensors' own error types for corrupt files
            raise ValueError(f"{file}: cannot be read as safetensors ({e})") from None
    return torch.cat(pieces)


def _load_parameters(module, path: Path, manifest: dict, start: int, end: int) -> None:
    cfg = manifest["config"]
    with torch.no_grad():
        for name in PARAMETERS:
            t = _read(path, manifest, name, start, end) if name in SHARDED_PARAMETERS else _read(path, manifest, name)
            target = getattr(module, name)
            if name == "b_dec" and tuple(t.shape) != (cfg.d_in,):
                raise ValueError(f"{path}: b_dec has shape {list(t.shape)}, expected [{cfg.d_in}]")
            if tuple(t.shape) != tuple(target.shape):
                raise ValueError(f"{path}: {name} rows [{start}, {end}) have shape {list(t.shape)}, "
                                 f"expected {list(target.shape)}")
            target.copy_(t)


def _set_extra(sae, manifest: dict):
    sae.cfg.extra = dict(manifest.get("extra") or {})
    return sae


def load_sharded(path, *, group=None, device=None, dtype=None, backend: str = "auto"):
    """This rank's ShardedTopKSAE / ShardedGradientTopKSAE from a sharded (any number of
    shards) or plain checkpoint, for the latent group ``group`` (any size up to M).
    Reads only the rows of this rank's slice. dtype defaults to the saved one."""
    path = Path(path)
    manifest = read_manifest(path)
    cfg = manifest["config"]
    if dtype is None:
        dtype = getattr(torch, manifest.get("dtype", "float32"))
    sae = build_sharded(cfg, group=group, backend=backend, device=device, dtype=dtype)
    _load_parameters(sae, path, manifest, sae.start, sae.end)
    return _set_extra(sae, manifest)


def load_into(sae, path) -> dict:
    """Copy a checkpoint's parameters into an existing SAE of the same config, in place.

    ``sae``: a sharded SAE (only its slice's rows are read, whatever the checkpoint's number
    of shards) or a plain TopKSAE / GradientTopKSAE (every row). ``path``: a sharded or plain
    checkpoint. Returns the manifest (read_manifest). ValueError when the configs differ.
    """
    path = Path(path)
    manifest = read_manifest(path)
    saved = manifest["config"]
    if saved.to_dict() | {"extra": {}} != sae.cfg.to_dict() | {"extra": {}}:
        raise ValueError(f"{path}: SAE config {saved.to_dict()} differs from this SAE's {sae.cfg.to_dict()}")
    _load_parameters(sae, path, manifest, getattr(sae, "start", 0), getattr(sae, "end", saved.n_latents))
    return manifest


def load_unsharded(path, *, device=None, dtype=None, backend: str = "auto"):
    """A single-process saekit TopKSAE / GradientTopKSAE stitched from every shard."""
    path = Path(path)
    manifest = read_manifest(path)
    cfg = manifest["config"]
    if dtype is None:
        dtype = getattr(torch, manifest.get("dtype", "float32"))
    sae = build_sae(cfg, device=device, dtype=dtype, backend=backend)
    _load_parameters(sae, path, manifest, 0, cfg.n_latents)
    return _set_extra(sae, manifest)


def load_optimizer_state(path, sae, optimizer) -> dict:
    """Restore ``optimizer`` (built over ``sae``'s parameters) from a checkpoint saved with one,
    resharding its row-sharded state to ``sae``'s slice (sharded or plain SAE). Returns the
    manifest's ``extra`` dict."""
    path = Path(path)
    manifest = read_manifest(path)
    saved = manifest.get("optimizer")
    if not saved:
        raise ValueError(f"{path / CONFIG_FILE}: this checkpoint was saved without optimizer state")
    start, end = getattr(sae, "start", 0), getattr(sae, "end", sae.n_latents)
    params = dict(sae.named_parameters())
    order = [p for group in optimizer.param_groups for p in group["params"]]
    index = {id(p): i for i, p in enumerate(order)}
    if len(saved["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(f"{path}: optimizer has {len(optimizer.param_groups)} param groups, "
                         f"the checkpoint {len(saved['param_groups'])}")
    from safetensors import safe_open

    with safe_open(str(path / manifest["shards"][0]["file"]), framework="pt") as f:
        keys = [k for k in f.keys() if k.startswith("optimizer.")]
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    state, groups = {}, []
    for key in keys:
        _, name, entry = key.split(".", 2)
        if name not in params or id(params[name]) not in index:
            raise ValueError(f"{path}: optimizer state {key!r} names a parameter the optimizer does not hold")
        param = params[name]
        # Row-sharded exactly when it has its parameter's shard shape (Adam's moments; not "step").
        row_sharded = name in SHARDED_PARAMETERS and shapes[key] == shapes[name]
        value = _read(path, manifest, key, start, end) if row_sharded else _read(path, manifest, key)
        state.setdefault(index[id(param)], {})[entry] = value  # load_state_dict moves it to the param
    for group, saved_group in zip(optimizer.param_groups, saved["param_groups"]):
        g = {k: (tuple(v) if isinstance(v, list) else v) for k, v in saved_group.items() if k != "params"}
        g["params"] = [index[id(p)] for p in group["params"]]
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return manifest.get("extra", {})
