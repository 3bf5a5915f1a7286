"""The 2-D (data x latent) layout of ranks and ``setup_distributed``, which starts it.

Ranks form a ``data x latent`` grid, latent fastest: global rank = data_rank * latent +
latent_rank. So the ranks that share one SAE's latents (a *latent group*, which exchanges
activations every step) are neighbours, i.e. on one node under torchrun's numbering, where
NVLink carries their traffic; *data groups* (one rank per latent slice, averaging gradients
once per step) span nodes.

- latent = 1: plain data parallelism (every rank holds the whole SAE).
- data = 1: pure latent sharding (every rank sees the same batch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from saekit.distributed.timeouts import (
    DEFAULT_TIMEOUT_S,
    as_timedelta,
    nccl_environment,
    set_collective_timeout,
)


@dataclass(frozen=True)
class ParallelLayout:
    """How the ranks are split: ``data`` replicas, each sharding the latents over ``latent`` ranks."""

    data: int = 1
    latent: int = 1

    def __post_init__(self):
        for name in ("data", "latent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ParallelLayout.{name} must be a positive int, got {value!r}")

    @property
    def world(self) -> int:
        return self.data * self.latent

    @classmethod
    def for_world(cls, world: int, latent: int = 1) -> ParallelLayout:
        """The layout that shards latents over ``latent`` ranks and replicates over the rest."""
        if isinstance(latent, bool) or not isinstance(latent, int) or latent < 1:
            raise ValueError(f"latent parallelism must be a positive int, got {latent!r}")
        if world % latent:
            raise ValueError(f"latent parallelism {latent} must divide the number of ranks {world}")
        return cls(data=world // latent, latent=latent)

    def coords(self, rank: int) -> tuple[int, int]:
        """(data_rank, latent_rank) of a global rank."""
        return divmod(rank, self.latent)

    def latent_groups(self) -> list[list[int]]:
        """Global ranks of each latent group (one per data rank)."""
        return [[d * self.latent + j for j in range(self.latent)] for d in range(self.data)]

    def data_groups(self) -> list[list[int]]:
        """Global ranks of each data group (one per latent slice)."""
        return [[d * self.latent + j for d in range(self.data)] for j in range(self.latent)]


@dataclass
class DistributedContext:
    """What a rank needs to know: its place in the layout, its groups and its device.

    ``latent_group`` / ``data_group`` are None when torch.distributed is not running (one
    process); pass ``latent_group`` to the sharded SAEs, ``data_group`` to DDP, to
    DeadLatentTracker(process_group=...) and to the metric reductions.
    """

    layout: ParallelLayout
    rank: int
    data_rank: int
    latent_rank: int
    latent_group: object
    data_group: object
    device: torch.device
    backend: str | None
    timeout_s: float

    @property
    def world(self) -> int:
        return self.layout.world

    @property
    def is_main(self) -> bool:
        """Global rank 0: the rank that logs and writes manifests."""
        return self.rank == 0

    @property
    def is_writer(self) -> bool:
        """Data rank 0: writes its latent slice into checkpoints (other data ranks hold copies)."""
        return self.data_rank == 0


def shard_bounds(n_latents: int, world: int, rank: int) -> tuple[int, int]:
    """[start, end) of rank's contiguous slice of M latents over ``world`` ranks.

    The first M % world ranks hold one latent more; every rank holds at least one.
    """
    if world > n_latents:
        raise ValueError(f"cannot shard {n_latents} latents over {world} ranks: every rank needs at least one latent")
    if not 0 <= rank < world:
        raise ValueError(f"rank must lie in [0, {world}), got {rank}")
    base, extra = divmod(n_latents, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _device_for(backend: str, local_rank: int, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if backend == "nccl":
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup_distributed(layout: ParallelLayout | int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, *,
                      backend: str | None = None, device=None) -> DistributedContext:
    """Start torch.distributed from torchrun's environment and build the layout's groups.

    Args:
        layout: a ParallelLayout, or an int giving the latent parallelism (data = world /
            latent), or None (data parallel over every rank). Its world must equal WORLD_SIZE.
        timeout_s: every collective's time limit (default 600 s). A rank that fails or hangs
            makes the others raise CollectiveError after at most this long (see timeouts).
        backend: "nccl" or "gloo" (default: nccl when CUDA is available, else gloo).
        device: this rank's device (default: cuda:LOCAL_RANK with nccl, else cpu); with CUDA
            it becomes the current device.

    Without torchrun's variables (WORLD_SIZE unset) and no process group running, returns a
    one-process context (groups None) and starts nothing, so one code path serves both.
    An already initialised default group is reused (its timeout is not changed).
    """
    set_collective_timeout(as_timedelta(timeout_s).total_seconds())
    initialised = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialised else int(os.environ.get("WORLD_SIZE", "1"))
    if layout is None or isinstance(layout, int):
        layout = ParallelLayout.for_world(world, 1 if layout is None else layout)
    if layout.world != world:
        raise ValueError(f"layout {layout.data} (data) x {layout.latent} (latent) needs {layout.world} ranks, "
                         f"but the job has {world} (WORLD_SIZE)")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not initialised and "WORLD_SIZE" not in os.environ:
        return DistributedContext(layout, 0, 0, 0, None, None, _device_for(backend or "gloo", 0, device),
                                  None, float(timeout_s))
    if not initialised:
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            nccl_environment()
        dev = _device_for(backend, local_rank, device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend, timeout=as_timedelta(timeout_s),
                                device_id=dev if backend == "nccl" else None)
    backend = dist.get_backend()
    dev = _device_for(backend, local_rank, device)
    rank = dist.get_rank()
    data_rank, latent_rank = layout.coords(rank)
    td = as_timedelta(timeout_s)
    # Every rank creates every group in the same order (torch.distributed's rule).
    latent_group, _ = dist.new_subgroups_by_enumeration(layout.latent_groups(), timeout=td)
    data_group, _ = dist.new_subgroups_by_enumeration(layout.data_groups(), timeout=td)
    return DistributedContext(layout, rank, data_rank, latent_rank, latent_group, data_group, dev, backend,
                              float(timeout_s))


def teardown_distributed() -> None:
    """Destroy every process group (safe to call when none is running)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
