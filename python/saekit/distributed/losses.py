"""Losses whose data-parallel gradient is the gradient of the whole global batch's loss.

The FVU divides by the batch's total variance, so the mean of D per-rank FVUs is not the FVU of
the D batches together. :func:`data_parallel_fvu` divides this rank's squared error by the
*global* total variance (a constant: it does not depend on the SAE), so averaging its gradients
over the data group (``all_reduce_gradients``) gives exactly the gradient of the global FVU,
and data-parallel training on D batches of N rows equals one process on their concatenation.
AuxK is an FVU of the residual and splits the same way.
"""

from __future__ import annotations

import torch

from saekit.distributed.comm import all_reduce_, group_size
from saekit.nn._casting import flatten_rows
from saekit.nn.metrics import fvu


def global_total_variance(x, group) -> torch.Tensor:
    """sum ||x - mean(x)||^2 over every row of every rank of ``group``, the mean taken over all
    of them; x [..., d] this rank's rows, or a list of such (a step's micro-batches, taken one at
    a time). One all-reduce of 2 d + 1 float64 numbers; returns a float64 scalar, identical on
    every rank, without gradient."""
    with torch.no_grad():
        stats = None
        for part in [x] if isinstance(x, torch.Tensor) else x:
            x2 = flatten_rows(part).double()
            moments = torch.cat([x2.sum(0), x2.pow(2).sum(0), x2.new_tensor([x2.shape[0]])])
            stats = moments if stats is None else stats + moments
        all_reduce_(stats, group, "all-reduce of variance statistics")
        d = (stats.shape[0] - 1) // 2
        s1, s2, n = stats[:d], stats[d:2 * d], stats[2 * d]
        return (s2 - s1.pow(2) / n.clamp_min(1)).sum().clamp_min(0.0)


def data_parallel_fvu(x: torch.Tensor, x_hat: torch.Tensor, group) -> torch.Tensor:
    """This rank's share of the FVU of the global batch (the rows of every rank of ``group``).

    x [..., d] (a constant), x_hat [..., d] (differentiable): this rank's rows. Returns the float32
    scalar D * sum ||x - x_hat||^2 / T, with T the global total variance (global_total_variance)
    and D the group's size. Its mean over the group, and the mean of its gradients, are the
    global batch's FVU and its gradient. With one rank it is exactly ``saekit.nn.fvu``.
    """
    if group_size(group) == 1:
        return fvu(x, x_hat)
    return fvu_share(x, x_hat, global_total_variance(x, group), group)


def fvu_share(x: torch.Tensor, x_hat: torch.Tensor, total: torch.Tensor, group) -> torch.Tensor:
    """This micro-batch's share of the FVU of a step accumulated over several micro-batches (on
    every rank of ``group``): D * sum ||x - x_hat||^2 / total, with ``total`` the step's total
    variance (global_total_variance of all its rows) and D the group's size. Summed over the
    micro-batches and averaged over the group, values and gradients are the step's FVU's."""
    err = (flatten_rows(x).float() - flatten_rows(x_hat, "x_hat").float()).pow(2).sum()
    return err * (group_size(group) / total.clamp_min(torch.finfo(torch.float32).tiny)).float()


def data_parallel_auxk(residual: torch.Tensor, aux_reconstruction: torch.Tensor, group) -> torch.Tensor:
    """This rank's share of the global batch's AuxK loss (before its coefficient): the
    data_parallel_fvu of predicting the residual [..., d] (treated as a constant) by the decode of
    the dead latents [..., d]. With one rank it equals ``saekit.nn.metrics.auxk_loss``. A rank
    without rows still joins the all-reduce of the variance (the others wait for it)."""
    if residual.numel() == 0 and group_size(group) == 1:
        return residual.new_zeros(())
    return data_parallel_fvu(residual.detach(), aux_reconstruction, group)
