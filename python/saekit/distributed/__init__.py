"""SAEs past one GPU: latent sharding (tensor parallel over M), data parallelism on a 2-D
(data x latent) layout, per-shard checkpoints that load into any number of ranks, and
timeouts that turn a failed or hung rank into a clear error.

Typical use under ``torchrun --nproc-per-node 8 ...``::

    ctx = setup_distributed(ParallelLayout.for_world(8, latent=4), timeout_s=300)
    sae = build_sharded(cfg, group=ctx.latent_group, device=ctx.device)
    tracker = dead_latent_tracker(cfg.n_latents, 10_000_000, ctx, device=ctx.device)
    out = sae(x, dead=tracker.dead)           # x: this data rank's batch, same on its latent group
    loss = data_parallel_fvu(x, out.x_hat, ctx.data_group)   # averaged gradients = global batch's
    loss.backward(); all_reduce_gradients(sae, ctx.data_group); optimizer.step()
    save_sharded(sae, path, optimizer=opt, data_group=ctx.data_group)

saekit.training.Trainer(..., ctx=ctx) does all of this per step (with AuxK, dead latents, metrics,
exact resume); ``torchrun ... -m saekit train --latent-parallel L`` runs it from the command line.
"""

from saekit.distributed.checkpoint import (
    load_into,
    load_optimizer_state,
    load_sharded,
    load_unsharded,
    read_manifest,
    save_sharded,
)
from saekit.distributed.comm import copy_to_group, gather_candidates, reduce_from_group
from saekit.distributed.mesh import (
    DistributedContext,
    ParallelLayout,
    setup_distributed,
    shard_bounds,
    teardown_distributed,
)
from saekit.distributed.losses import data_parallel_auxk, data_parallel_fvu
from saekit.distributed.metrics import (
    all_reduce_gradients,
    dead_latent_tracker,
    global_fvu,
    mean_over_group,
    row_mean_over_group,
    reduce_metrics,
)
from saekit.distributed.sharded_sae import (
    ShardedGradientTopKSAE,
    ShardedTopKSAE,
    build_sharded,
)
from saekit.distributed.timeouts import CollectiveError, Watchdog, check_peers

__all__ = [
    "CollectiveError",
    "DistributedContext",
    "ParallelLayout",
    "ShardedGradientTopKSAE",
    "ShardedTopKSAE",
    "Watchdog",
    "all_reduce_gradients",
    "build_sharded",
    "check_peers",
    "copy_to_group",
    "data_parallel_auxk",
    "data_parallel_fvu",
    "dead_latent_tracker",
    "gather_candidates",
    "global_fvu",
    "load_into",
    "load_optimizer_state",
    "load_sharded",
    "load_unsharded",
    "mean_over_group",
    "row_mean_over_group",
    "read_manifest",
    "reduce_from_group",
    "reduce_metrics",
    "save_sharded",
    "setup_distributed",
    "shard_bounds",
    "teardown_distributed",
]
