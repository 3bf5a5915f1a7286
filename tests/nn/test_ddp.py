"""A TopKSAE under DistributedDataParallel (gloo, 2 CPU processes) matches one process."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from saekit.nn import DeadLatentTracker, TopKSAE


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, x, state, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        sae = TopKSAE(8, 24, 3, backend="cpu")
        sae.load_state_dict(state)
        ddp = torch.nn.parallel.DistributedDataParallel(sae)
        shard = x.chunk(world)[rank]
        out = ddp(shard)
        (out.x_hat - shard).pow(2).sum().div(x.shape[0]).mul(world).backward()
        tracker = DeadLatentTracker(24, threshold_tokens=1)
        tracker.update(out.code.indices, out.code.values)
        if rank == 0:
            torch.save({"grads": [p.grad for p in sae.parameters()], "since": tracker.tokens_since_fired},
                       os.path.join(out_dir, "rank0.pt"))
    finally:
        dist.destroy_process_group()
    # torch 2.14.1 aborts about one CPU DDP process in ten at interpreter exit ("terminate called
    # without an active exception", with or without destroy_process_group; plain gloo
    # collectives do not): leave at once, the results being on disk. Exceptions never get here.
    os._exit(0)


def test_ddp_gradients_and_dead_statistics_match_single_process(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    sae = TopKSAE(8, 24, 3, backend="cpu")
    state = {k: v.clone() for k, v in sae.state_dict().items()}
    mp.spawn(_worker, args=(2, _free_port(), x, state, str(tmp_path)), nprocs=2, join=True)
    result = torch.load(tmp_path / "rank0.pt")
    out = sae(x)
    (out.x_hat - x).pow(2).sum().div(x.shape[0]).backward()
    for p, g in zip(sae.parameters(), result["grads"]):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)
    tracker = DeadLatentTracker(24, threshold_tokens=1)
    tracker.update(out.code.indices, out.code.values)
    assert torch.equal(result["since"], tracker.tokens_since_fired)
