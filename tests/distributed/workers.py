"""Entry points of the processes the distributed tests spawn (gloo on CPU, one thread each).

Each worker sets torchrun's variables and starts through saekit.distributed.setup_distributed,
runs its scenarios and writes ``rank<r>.pt`` under the output directory for the test to check.
"""

from __future__ import annotations

import os
import socket
import time

import torch
import torch.multiprocessing as mp

TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, world: int, *args) -> None:
    """Run fn(rank, world, port, *args) in ``world`` processes and wait for all of them."""
    mp.spawn(_entry, args=(fn, world, free_port(), args), nprocs=world, join=True)


def _entry(rank, fn, world, port, args):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    fn(rank, world, *args)


def _start(layout, timeout_s=TIMEOUT_S):
    from saekit.distributed import setup_distributed

    return setup_distributed(layout, timeout_s=timeout_s, backend="gloo")


def _sharded(case, group):
    from saekit.distributed.sharded_sae import SHARDED_CLASSES

    from tests.distributed.scenarios import full_sae

    return SHARDED_CLASSES[case.arch].from_sae(full_sae(case), group=group)


def latent_parallel(rank, world, out_dir, load_from=None):
    """Every case on a latent group of all ranks; a few training steps; a sharded checkpoint
    (with optimizer state). With ``load_from``: that checkpoint resharded onto these ranks."""
    from saekit.distributed import (
        ParallelLayout,
        load_optimizer_state,
        load_sharded,
        save_sharded,
        teardown_distributed,
    )

    from tests.distributed.scenarios import CASES, TRAIN, run_case, train_steps

    ctx = _start(ParallelLayout(data=1, latent=world))
    try:
        result = {"cases": {case.name: run_case(_sharded(case, ctx.latent_group), case) for case in CASES}}
        trained = _sharded(TRAIN, ctx.latent_group)
        history, opt = train_steps(trained)
        result["train"] = history
        save_sharded(trained, os.path.join(out_dir, "ckpt"), optimizer=opt, data_group=ctx.data_group,
                     extra={"step": len(history)})
        if load_from is not None:
            sae = load_sharded(load_from, group=ctx.latent_group, backend="cpu")
            opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
            extra = load_optimizer_state(load_from, sae, opt)
            result["resharded"] = {"start": sae.start, "end": sae.end, "extra": extra,
                                   "out": sae(TRAIN.tensors()["x"], dead=TRAIN.tensors()["dead"]),
                                   "exp_avg": opt.state[sae.W_enc]["exp_avg"].clone()}
            save_sharded(sae, os.path.join(out_dir, "resaved"), optimizer=opt, extra=extra)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        teardown_distributed()


def mesh(rank, world, out_dir):
    """2 (data) x 2 (latent): data-parallel training of a latent-sharded SAE, with gradients
    averaged by all_reduce_gradients and, separately, by DDP over the data group; dead-latent
    statistics and metrics reduced over the data group."""
    from saekit.distributed import (
        ParallelLayout,
        ShardedTopKSAE,
        all_reduce_gradients,
        dead_latent_tracker,
        data_parallel_auxk,
        data_parallel_fvu,
        global_fvu,
        mean_over_group,
        reduce_metrics,
        row_mean_over_group,
        teardown_distributed,
    )
    from saekit.nn import fvu

    from tests.distributed.scenarios import TRAIN, full_sae, train_steps

    ctx = _start(ParallelLayout(data=2, latent=2))
    try:
        t = TRAIN.tensors()
        half = TRAIN.N // 2
        rows = slice(ctx.data_rank * half, (ctx.data_rank + 1) * half)
        sae = ShardedTopKSAE.from_sae(full_sae(TRAIN), group=ctx.latent_group)
        history, _ = train_steps(sae, rows=rows, data_world=2, auxk=False,
                                 reduce=lambda m: all_reduce_gradients(m, ctx.data_group))
        # DDP over the data group instead of the explicit reduction: one step's gradients.
        ddp_sae = ShardedTopKSAE.from_sae(full_sae(TRAIN), group=ctx.latent_group)
        ddp = torch.nn.parallel.DistributedDataParallel(ddp_sae, process_group=ctx.data_group)
        x = t["x"][rows]
        out = ddp(x, dead=t["dead"])
        ((x - out.x_hat).pow(2).sum() / TRAIN.N * 2).backward()
        tracker = dead_latent_tracker(TRAIN.M, 1, ctx)
        tracker.update(out.code.indices, out.code.values)
        with torch.no_grad():
            metrics = reduce_metrics({"fvu": fvu(x, out.x_hat), "l0": out.code.l0.mean()}, ctx.data_group)
            gfvu = global_fvu(x, out.x_hat, ctx.data_group)
            x_mean = mean_over_group(x.mean(0), ctx.data_group)
        # Uneven data ranks: data rank 0 holds every row, data rank 1 none (its AuxK loss must
        # still join the variance all-reduce); and the row-weighted mean of 16 + 4 rows.
        uneven = ShardedTopKSAE.from_sae(full_sae(TRAIN), group=ctx.latent_group)
        x = t["x"] if ctx.data_rank == 0 else t["x"][:0]
        out = uneven(x, dead=t["dead"])
        loss = data_parallel_fvu(x, out.x_hat, ctx.data_group) + data_parallel_auxk(
            x - out.x_hat, uneven.decode_without_bias(out.aux), ctx.data_group) / 32
        loss.backward()
        all_reduce_gradients(uneven, ctx.data_group)
        row_mean = row_mean_over_group(t["x"] if ctx.data_rank == 0 else t["x"][:4], ctx.data_group)
        result = {"coords": (ctx.data_rank, ctx.latent_rank), "start": sae.start, "end": sae.end,
                  "train": history, "ddp_grads": {n: p.grad.clone() for n, p in ddp_sae.named_parameters()},
                  "since": tracker.tokens_since_fired.clone(), "metrics": metrics, "global_fvu": gfvu,
                  "x_mean": x_mean, "uneven_grads": {n: p.grad.clone() for n, p in uneven.named_parameters()},
                  "row_mean": row_mean}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        teardown_distributed()


def hang_or_crash(rank, world, mode, timeout_s):
    """Rank 1 hangs (sleeps) or raises before the first collective; rank 0 runs a forward
    (mode "hang" or "crash") or checks its peers (mode "barrier")."""
    from saekit.distributed import ShardedTopKSAE, check_peers

    ctx = _start(world, timeout_s=timeout_s)
    sae = ShardedTopKSAE(8, 16, 2, group=ctx.latent_group, backend="cpu")
    if rank == 1:
        if mode == "crash":
            raise RuntimeError("rank 1 fails on purpose")
        time.sleep(60)
    if mode == "barrier":
        check_peers("step barrier")
    sae(torch.randn(4, 8))
