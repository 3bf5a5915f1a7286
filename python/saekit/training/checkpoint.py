"""Training checkpoints: written atomically, read back exactly, never pickled.

Layout of ``<out>/checkpoints/``::

    step-00001000/             one complete checkpoint (a directory renamed into place)
        state.json             step, data position, schedule, optimizer hyper-parameters and
                               scalar state, and the sha256 of every other file
        rng.safetensors        torch CPU (and CUDA) generator states
        <run>/sae.safetensors  the SAE (saekit.io format, with cfg.json)
        <run>/optimizer.safetensors   Adam's moment tensors, keyed by parameter name
        <run>/trainer.safetensors     the dead-latent counters
    latest                     name of the newest checkpoint (replaced atomically)

A checkpoint is built in ``.tmp-step-...`` and ``os.replace``d to its final name, then
``latest`` is replaced, so a crash or kill at any point leaves the previous checkpoint usable.
A job under torch.distributed writes per-shard checkpoints instead (same directory names and
``latest``; saekit.training.sharded_checkpoint); ``load_checkpoint`` reads either kind into
plain or sharded SAEs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from saekit.io import save_sae

STATE_FILE = "state.json"
LATEST_FILE = "latest"
FORMAT = "saekit-checkpoint-1"
SHARDED_FORMAT = "saekit-checkpoint-sharded-1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or corrupt."""


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict) -> tuple[dict, dict, list]:
    """Split an optimizer's state into tensors (safetensors) and JSON (scalars, groups)."""
    sd = optimizer.state_dict()
    index_to_name = {}
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(ordered):
        index_to_name[i] = names[id(p)]
    tensors, scalars = {}, {}
    for i, entry in sd["state"].items():
        pname = index_to_name[i]
        scalars[pname] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                tensors[f"{pname}.{key}"] = value.detach().contiguous().cpu()
            elif isinstance(value, torch.Tensor):
                scalars[pname][key] = {"value": value.item(), "dtype": str(value.dtype).removeprefix("torch.")}
            else:
                scalars[pname][key] = {"value": value}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
              | {"params": [index_to_name[i] for i in g["params"]]} for g in sd["param_groups"]]
    return tensors, scalars, groups


def _restore_optimizer(optimizer, names: dict, tensors: dict, scalars: dict, groups: list, source) -> None:
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    name_to_index = {names[id(p)]: i for i, p in enumerate(ordered)}
    state = {}
    for pname, entries in scalars.items():
        if pname not in name_to_index:
            raise CheckpointError(f"{source}: optimizer state for unknown parameter {pname!r}")
        entry = {}
        for key, spec in entries.items():
            value = spec["value"]
            entry[key] = torch.tensor(value, dtype=getattr(torch, spec["dtype"])) if "dtype" in spec else value
        for tkey, t in tensors.items():
            if tkey.startswith(pname + "."):
                entry[tkey[len(pname) + 1:]] = t
        state[name_to_index[pname]] = entry
    param_groups = []
    for g in groups:
        g = dict(g)
        g["params"] = [name_to_index[n] for n in g["params"]]
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        param_groups.append(g)
    try:
        optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{source}: optimizer state does not fit this optimizer ({e})") from None


def save_checkpoint(root, step: int, runs: dict, state: dict, *, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` (``<out>/checkpoints``) and return its path.

    runs: {name: TrainRun} (each with .sae, .optimizer, .tracker). state: JSON-able trainer
    state (step, data position, config...). Older checkpoints beyond the newest ``keep`` go.
    """
    from safetensors.torch import save_file

    root = Path(root)
    name = f"step-{step:08d}"
    tmp = start_checkpoint(root, name)
    runs_json = {}
    for run_name, run in runs.items():
        run_dir = tmp / run_name
        save_sae(run.sae, run_dir)
        names = {id(p): n for n, p in run.sae.named_parameters()}
        tensors, scalars, groups = _optimizer_tensors(run.optimizer, names)
        save_file(tensors, str(run_dir / "optimizer.safetensors"))
        save_file({"tokens_since_fired": run.tracker.tokens_since_fired.cpu().contiguous()},
                  str(run_dir / "trainer.safetensors"))
        runs_json[run_name] = {"optimizer_scalars": scalars, "optimizer_groups": groups,
                               "dead_threshold_tokens": run.tracker.threshold_tokens}
    save_file(rng_state(), str(tmp / "rng.safetensors"))
    body = {"format": FORMAT, **state, "step": step, "runs": runs_json, "files": file_digests(tmp)}
    (tmp / STATE_FILE).write_text(json.dumps(body, indent=1) + "\n")
    return publish(root, tmp, name, keep)


def start_checkpoint(root: Path, name: str) -> Path:
    """The empty staging directory ``root/.tmp-<name>`` (stale ones, left by a run killed while
    writing, are removed first)."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{name}"
    tmp.mkdir()
    return tmp


def rng_state() -> dict:
    """This process's torch generator states: {"cpu": ..., "cuda": ... (when initialised)}."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def file_digests(directory: Path) -> dict:
    """{path relative to ``directory``: sha256} of every file under it."""
    return {str(f.relative_to(directory)): _sha256(f) for f in sorted(directory.rglob("*")) if f.is_file()}


def publish(root: Path, tmp: Path, name: str, keep: int) -> Path:
    """Rename the finished checkpoint ``tmp`` to ``root/name``, point ``latest`` at it and
    remove older checkpoints beyond the newest ``keep``; returns the final path."""
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    latest_tmp = root / f".{LATEST_FILE}.tmp"
    latest_tmp.write_text(name + "\n")
    os.replace(latest_tmp, root / LATEST_FILE)
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root) -> Path | None:
    """The newest complete checkpoint under ``root``, or None if there is none."""
    root = Path(root)
    latest = root / LATEST_FILE
    if latest.is_file():
        candidate = root / latest.read_text().strip()
        if (candidate / STATE_FILE).is_file():
            return candidate
    done = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def read_checkpoint_state(path) -> dict:
    """The verified state.json of checkpoint ``path``: every file it lists must exist and match
    its sha256 (CheckpointError naming the file otherwise)."""
    path = Path(path)
    file = path / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"{path}: not a saekit checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: corrupt ({e})") from None
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, SHARDED_FORMAT):
        raise CheckpointError(f"{file}: not a {FORMAT} or {SHARDED_FORMAT} state file")
    for rel, digest in state.get("files", {}).items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"{path}: checkpoint is incomplete, {rel} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{path}: checkpoint is corrupt, {rel} does not match its checksum")
    return state


def load_checkpoint(path, runs: dict, *, rank: int = 0) -> dict:
    """Restore ``runs`` ({name: TrainRun}) in place from checkpoint ``path``; returns its state.

    The SAE weights, Adam state, dead-latent counters and RNG states (``rank``'s, for a
    per-shard checkpoint) are restored exactly. A per-shard checkpoint, or sharded SAEs in
    ``runs``, go through saekit.training.sharded_checkpoint, which reshards.
    Raises CheckpointError for a corrupt checkpoint or one written for other runs or shapes.
    """
    from saekit.io import CONFIG_FILE, WEIGHTS_FILE, _state_shapes, config_from_dict, read_config, read_tensors

    path = Path(path)
    state = read_checkpoint_state(path)
    if set(state["runs"]) != set(runs):
        raise CheckpointError(f"{path}: holds runs {sorted(state['runs'])}, this trainer has {sorted(runs)}")
    if state["format"] == SHARDED_FORMAT or any(hasattr(run.sae, "shard_world") for run in runs.values()):
        from saekit.training.sharded_checkpoint import load_runs

        load_runs(path, state, runs, rank=rank)
        return state
    for run_name, run in runs.items():
        run_dir = path / run_name
        saved = config_from_dict(read_config(run_dir), run_dir / CONFIG_FILE)
        if saved.to_dict() | {"extra": {}} != run.sae.cfg.to_dict() | {"extra": {}}:
            raise CheckpointError(f"{run_dir}: SAE config {saved.to_dict()} differs from this run's "
                                  f"{run.sae.cfg.to_dict()}")
        weights = read_tensors(run_dir / WEIGHTS_FILE, _state_shapes(saved))
        params = dict(run.sae.named_parameters())
        shapes = {n: tuple(p.shape) for n, p in params.items()}
        opt_tensors = _read_plain(run_dir / "optimizer.safetensors")
        for key, t in opt_tensors.items():
            pname = key.rsplit(".", 1)[0]
            if pname not in shapes or tuple(t.shape) != shapes[pname]:
                raise CheckpointError(f"{run_dir / 'optimizer.safetensors'}: tensor {key!r} does not fit the SAE")
        counters = _read_plain(run_dir / "trainer.safetensors")["tokens_since_fired"]
        with torch.no_grad():
            for name, t in weights.items():
                target = run.sae.get_buffer(name) if name == "activation.threshold" else params[name]
                target.copy_(t)
            run.tracker.tokens_since_fired.copy_(counters)
        info = state["runs"][run_name]
        names = {id(p): n for n, p in run.sae.named_parameters()}
        _restore_optimizer(run.optimizer, names, opt_tensors, info["optimizer_scalars"],
                           info["optimizer_groups"], run_dir)
    restore_rng(_read_plain(path / "rng.safetensors"))
    return state


def _read_plain(file: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{file}: cannot be read as safetensors ({e})") from None
