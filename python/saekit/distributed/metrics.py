"""Reductions a data-parallel trainer needs: gradients, metrics and dead-latent statistics.

All of them take the *data* group (ctx.data_group): ranks of one latent group hold the same
batch and replicated outputs, so reducing over the world would count each batch R times.
"""

from __future__ import annotations

import torch

from saekit.distributed.comm import all_reduce_, group_size
from saekit.nn.dead_latents import DeadLatentTracker


def all_reduce_gradients(module: torch.nn.Module, group) -> None:
    """Average every parameter's .grad over ``group`` in one flat all-reduce (float32 buffer).

    The alternative to DistributedDataParallel(module, process_group=group), for trainers that
    want one explicit reduction per step (e.g. after gradient accumulation). Parameters without
    a gradient count as zero on this rank.
    """
    world = group_size(group)
    if world == 1:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
    all_reduce_(flat, group, "all-reduce of gradients over the data group")
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        chunk = flat[offset:offset + n].view_as(p).to(p.dtype)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n


def mean_over_group(t: torch.Tensor, group) -> torch.Tensor:
    """The mean of ``t`` (any shape, same on every rank) over ``group``, as a new float32 tensor
    (e.g. a metric every rank computed on its own batch)."""
    out = t.detach().float().clone()
    all_reduce_(out, group, "all-reduce of a mean over the data group")
    return out / group_size(group)


def row_mean_over_group(x: torch.Tensor, group) -> torch.Tensor:
    """[d] float32 mean of the rows x [N, d] of every rank of ``group`` together, weighted by
    their numbers of rows (a rank may have none): the b_dec initialisation."""
    x2 = x.detach().reshape(-1, x.shape[-1]).double()
    stats = torch.cat([x2.sum(0), x2.new_tensor([x2.shape[0]])])
    all_reduce_(stats, group, "all-reduce of the mean activation over the data group")
    return (stats[:-1] / stats[-1].clamp_min(1)).float()


def reduce_metrics(metrics: dict, group, *, op: str = "mean") -> dict:
    """{name: scalar tensor or float} -> the same names with the mean (or sum) over ``group``,
    as float32 CPU tensors, in one all-reduce. Every rank must pass the same names."""
    if op not in ("mean", "sum"):
        raise ValueError(f"op must be 'mean' or 'sum', got {op!r}")
    names = sorted(metrics)
    if not names:
        return {}
    device = next((v.device for v in metrics.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    stacked = torch.stack([torch.as_tensor(metrics[n], dtype=torch.float32, device=device).detach().reshape(())
                           for n in names])
    all_reduce_(stacked, group, "all-reduce of metrics over the data group")
    if op == "mean":
        stacked /= group_size(group)
    return dict(zip(names, stacked.cpu().unbind()))


def global_fvu(x: torch.Tensor, x_hat: torch.Tensor, group) -> torch.Tensor:
    """The FVU of the whole global batch (not the mean of per-rank FVUs), no gradient.

    x, x_hat [..., d] on this rank; one all-reduce of 2 * d + 2 float64 numbers. Returns a
    float32 scalar identical on every rank of ``group``.
    """
    with torch.no_grad():
        x2 = x.reshape(-1, x.shape[-1]).double()
        err = (x2 - x_hat.reshape(-1, x.shape[-1]).double()).pow(2).sum()
        stats = torch.cat([x2.sum(0), x2.pow(2).sum(0), err.reshape(1), x2.new_tensor([x2.shape[0]])])
        all_reduce_(stats, group, "all-reduce of FVU statistics")
        d = x.shape[-1]
        s1, s2, err, n = stats[:d], stats[d:2 * d], stats[2 * d], stats[2 * d + 1]
        total = (s2 - s1.pow(2) / n.clamp_min(1)).sum()
        return (err / total.clamp_min(torch.finfo(torch.float64).tiny)).float()


def dead_latent_tracker(n_latents: int, threshold_tokens: int, ctx, *, device=None) -> DeadLatentTracker:
    """A DeadLatentTracker over all M latents that reduces over ctx.data_group (see module doc).

    Feed it the global code of the sharded SAE (out.code.indices / values): every rank of a
    latent group sees the same code, so every rank ends with the same ``dead`` mask.
    """
    return DeadLatentTracker(n_latents, threshold_tokens, process_group=ctx.data_group, device=device)
