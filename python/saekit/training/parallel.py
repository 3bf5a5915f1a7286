"""What the trainer adds under torch.distributed (``torchrun``): each data rank's share of the
activation stream, the SAEs split over the latent group, and agreement between ranks.

Conventions (layout and groups: saekit.distributed.mesh):

- batches: data rank r of D reads batches r, r + D, r + 2D, ... of the one stream, so step s of
  a job with D data ranks trains on the batches a one-process run with D times the batch size
  would, and the stream's position after a step is the same on every rank (a checkpoint stores
  one position, and a job of any D, or one process, resumes from it);
- ``--batch-size`` is per data rank: the global batch is D times it;
- the ranks of a latent group read the same batch (the sharded SAE needs identical inputs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from saekit.training.source import ActivationBatch


class DataParallelSource:
    """Data rank ``rank`` of ``world``'s share of ``source`` (any ActivationSource).

    Each ``next_batch()`` reads this rank's batch and passes over the other ranks' ones with
    ``source.skip_batch()`` when the source has it (ToySource and HookedActivationSource do:
    no activations are computed), else a discarded ``next_batch()``. ``state_dict()`` is the
    whole stream's position, the same on every rank after every call.
    """

    def __init__(self, source, rank: int, world: int):
        if not 0 <= rank < world:
            raise ValueError(f"data rank must lie in [0, {world}), got {rank}")
        self.source = source
        self.rank, self.world = rank, world
        self.d_in = source.d_in
        self.need_grad = getattr(source, "need_grad", False)

    def _skip(self, n: int) -> None:
        skip = getattr(self.source, "skip_batch", None) or self.source.next_batch
        for _ in range(n):
            skip()

    def next_batch(self) -> ActivationBatch:
        self._skip(self.rank)
        batch = self.source.next_batch()
        self._skip(self.world - 1 - self.rank)
        return batch

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)


def is_sharded(sae) -> bool:
    """Whether ``sae`` is a latent-sharded SAE (saekit.distributed)."""
    return hasattr(sae, "shard_world")


def shard_saes(saes: dict, ctx) -> dict:
    """{name: TopKSAE / GradientTopKSAE} -> {name: this rank's ShardedTopKSAE /
    ShardedGradientTopKSAE over ctx.latent_group} with the same parameters, backend and
    cfg.extra. Every rank must pass the same SAEs (built from one seed): then a job starts from
    the weights a one-process run would, whatever its layout."""
    from saekit.distributed.sharded_sae import SHARDED_CLASSES

    out = {}
    for name, sae in saes.items():
        arch = sae.cfg.architecture
        if arch not in SHARDED_CLASSES:
            raise ValueError(f"SAE {name!r}: distributed training supports architectures "
                             f"{tuple(SHARDED_CLASSES)}, got {arch!r}")
        out[name] = SHARDED_CLASSES[arch].from_sae(sae, group=ctx.latent_group)
    return out


def save_final_saes(saes: dict, out_dir: Path, ctx, *, device=None) -> dict | None:
    """Write each SAE of ``saes`` to ``out_dir/<name>`` (saekit.io.save_sae in one process; one
    file per latent shard, every rank calling together, under torch.distributed) and return the
    SAEs to evaluate: ``saes`` in one process, the whole SAEs read back on rank 0, None on the
    other ranks."""
    from saekit.io import load_sae, save_sae

    if ctx is None or ctx.backend is None:
        for name, sae in saes.items():
            save_sae(sae, out_dir / name)
        return saes
    from saekit.distributed.checkpoint import save_sharded

    for name, sae in saes.items():
        save_sharded(sae, out_dir / name, data_group=ctx.data_group)
    if not ctx.is_main:
        return None
    return {name: load_sae(out_dir / name, device=device) for name in saes}


def any_rank(flag: bool, ctx, device) -> bool:
    """True on every rank when ``flag`` is True on at least one (an all-reduce over the world),
    so that every rank takes the same branch (stop, checkpoint) at the same step."""
    from saekit.distributed.comm import all_reduce_

    t = torch.tensor([int(bool(flag))], dtype=torch.int32, device=device)
    all_reduce_(t, None, "all-reduce of the stop flag")
    return bool(t.item())
