"""Training checkpoints of a job under torch.distributed: every rank writes only its own part.

Layout of ``<out>/checkpoints/step-00001000/`` (with ``latest`` next to it, as for one process)::

    state.json                  as saekit.training.checkpoint's (step, data position, sha256 of
                                every file), format "saekit-checkpoint-sharded-1", plus the
                                layout {"data": D, "latent": L}
    rng/rank-00003.safetensors  each rank's torch generator states
    <run>/                      saekit.distributed.save_sharded: one file per latent shard with
                                its rows of the parameters and of Adam's moments, cfg.json
    <run>/trainer.safetensors   the dead-latent counters [M] (the same on every rank)

It is written as the one-process checkpoint is: rank 0 creates ``.tmp-step-...``, every rank
writes its files, a barrier, rank 0 adds state.json and renames the directory into place, then
``latest``; a job killed at any point resumes from the previous checkpoint. ``out`` must be one
directory seen by every rank (one node, or a shared file system).

Loading reshards (saekit.training.checkpoint.load_checkpoint dispatches here): a per-shard
checkpoint resumes a job of any layout or one process, and a one-process checkpoint resumes a
distributed job.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from saekit.distributed.checkpoint import load_into, load_optimizer_state, save_sharded
from saekit.distributed.sharded_sae import SHARDED_PARAMETERS
from saekit.distributed.timeouts import check_peers
from saekit.io import WEIGHTS_FILE
from saekit.training import checkpoint as ckpt
from saekit.training.checkpoint import CheckpointError

RNG_DIR = "rng"
TRAINER_FILE = "trainer.safetensors"


def rng_file(rank: int) -> str:
    return f"{RNG_DIR}/rank-{rank:05d}.safetensors"


def save_sharded_checkpoint(root, step: int, runs: dict, state: dict, ctx, *, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``root`` (``<out>/checkpoints``); every rank calls this
    together and gets the path. runs: {name: TrainRun} holding this rank's sharded SAEs.
    state: JSON-able trainer state, the same on every rank (rank 0 writes it)."""
    from safetensors.torch import save_file

    root = Path(root)
    name = f"step-{step:08d}"
    tmp = root / f".tmp-{name}"
    if ctx.is_main:
        ckpt.start_checkpoint(root, name)
        (tmp / RNG_DIR).mkdir()
    check_peers("checkpoint: staging directory created")
    for run_name, run in runs.items():
        save_sharded(run.sae, tmp / run_name, optimizer=run.optimizer, data_group=ctx.data_group)
        if ctx.is_main:
            save_file({"tokens_since_fired": run.tracker.tokens_since_fired.cpu().contiguous()},
                      str(tmp / run_name / TRAINER_FILE))
    save_file(ckpt.rng_state(), str(tmp / rng_file(ctx.rank)))
    check_peers("checkpoint: every rank's files written")
    if ctx.is_main:
        runs_json = {run_name: {"dead_threshold_tokens": run.tracker.threshold_tokens}
                     for run_name, run in runs.items()}
        layout = {"data": ctx.layout.data, "latent": ctx.layout.latent}
        body = {"format": ckpt.SHARDED_FORMAT, **state, "step": step, "layout": layout, "runs": runs_json,
                "files": ckpt.file_digests(tmp)}
        (tmp / ckpt.STATE_FILE).write_text(json.dumps(body, indent=1) + "\n")
        ckpt.publish(root, tmp, name, keep)
    check_peers("checkpoint: in place")
    return root / name


def _row_slice(t: torch.Tensor, pname: str, sae) -> torch.Tensor:
    """Rows [start, end) of a one-process optimizer tensor of a row-sharded parameter."""
    if pname in SHARDED_PARAMETERS and t.dim() and t.shape[0] == sae.n_latents:
        return t[getattr(sae, "start", 0):getattr(sae, "end", sae.n_latents)]
    return t


def _load_plain_optimizer(run_dir: Path, info: dict, run) -> None:
    """Adam's state from a one-process checkpoint, cut to this rank's rows."""
    tensors = {key: _row_slice(t, key.rsplit(".", 1)[0], run.sae)
               for key, t in ckpt._read_plain(run_dir / "optimizer.safetensors").items()}
    names = {id(p): n for n, p in run.sae.named_parameters()}
    ckpt._restore_optimizer(run.optimizer, names, tensors, info["optimizer_scalars"], info["optimizer_groups"],
                            run_dir)


def load_runs(path, state: dict, runs: dict, *, rank: int = 0) -> None:
    """Restore ``runs`` (sharded or plain SAEs, any layout) from checkpoint ``path`` of either
    kind, whose verified state.json is ``state``; CheckpointError naming the problem."""
    path = Path(path)
    for run_name, run in runs.items():
        run_dir = path / run_name
        try:
            load_into(run.sae, run_dir)
            if (run_dir / WEIGHTS_FILE).is_file():  # a one-process checkpoint
                _load_plain_optimizer(run_dir, state["runs"][run_name], run)
            else:
                load_optimizer_state(run_dir, run.sae, run.optimizer)
        except CheckpointError:
            raise
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{run_dir}: does not fit this run ({e})") from None
        counters = ckpt._read_plain(run_dir / TRAINER_FILE)["tokens_since_fired"]
        if tuple(counters.shape) != tuple(run.tracker.tokens_since_fired.shape):
            raise CheckpointError(f"{run_dir / TRAINER_FILE}: counters for {counters.shape[0]} latents, "
                                  f"this SAE has {run.tracker.tokens_since_fired.shape[0]}")
        with torch.no_grad():
            run.tracker.tokens_since_fired.copy_(counters)
    own, first = path / rng_file(rank), path / rng_file(0)
    plain = path / "rng.safetensors"
    source = own if own.is_file() else first if first.is_file() else plain
    ckpt.restore_rng(ckpt._read_plain(source))
