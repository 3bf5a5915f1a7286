"""Differentiable collectives over a latent group, written as autograd Functions.

The latent-sharded SAE runs the same loss on every rank of its latent group (the usual
tensor-parallel contract): every tensor after a collective is replicated, so the upstream
gradient of a replicated tensor is the same on every rank. That fixes each backward:

============================  =============================  ===================================
function                      forward                        backward
============================  =============================  ===================================
copy_to_group(t)              identity                       all-reduce (sum) of the gradient
reduce_from_group(t)          all-reduce (sum)               identity
gather_candidates(v, s, i)    all-gather along columns       this rank's columns of the gradient
============================  =============================  ===================================

Every collective runs under ``timeouts.guard`` so that a failed or hung peer raises a
CollectiveError naming the collective instead of hanging.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from saekit.distributed.timeouts import guard


def group_size(group) -> int:
    """Ranks in ``group``; 1 when torch.distributed is not running."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def group_rank(group) -> int:
    """This rank's index in ``group``; 0 when torch.distributed is not running."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0
    return dist.get_rank(group)


def all_reduce_(t: torch.Tensor, group, what: str) -> torch.Tensor:
    """In-place sum over ``group`` (a no-op for one rank); returns t."""
    if group_size(group) > 1:
        with guard(what, group):
            dist.all_reduce(t, group=group)
    return t


# torch 2.14 renamed all_gather_into_tensor (deprecated there) to all_gather_single; 2.11 has
# only the old name.
_all_gather_flat = getattr(dist, "all_gather_single", None) or getattr(dist, "all_gather_into_tensor", None)


def _all_gather_rows(t: torch.Tensor, group, what: str) -> torch.Tensor:
    """[B, ...] on each of R ranks -> [R, B, ...] (rank order)."""
    out = t.new_empty(group_size(group), *t.shape)
    with guard(what, group):
        _all_gather_flat(out.view(-1), t.contiguous().view(-1), group=group)
    return out


class _CopyToGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, group):
        ctx.group = group
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        return all_reduce_(grad, ctx.group, "all-reduce of an input's gradient (backward)"), None


class _ReduceFromGroup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, group):
        return all_reduce_(t.contiguous().clone(), group, "all-reduce of partial reconstructions")

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_group(t: torch.Tensor, group) -> torch.Tensor:
    """Identity forward; backward sums the gradient over ``group``.

    Wrap a replicated input (x, b_dec) before rank-local work that reads it, so that its
    gradient adds every rank's contribution. Any shape.
    """
    if group_size(group) == 1 or not t.requires_grad:
        return t
    return _CopyToGroup.apply(t, group)


def reduce_from_group(t: torch.Tensor, group) -> torch.Tensor:
    """Sum of ``t`` over ``group`` (all-reduce); backward passes the gradient through unchanged.

    Use on partial results whose sum every rank then uses identically (partial x_hat [N, d]).
    """
    if group_size(group) == 1:
        return t
    return _ReduceFromGroup.apply(t, group)


def _to_bytes(t: torch.Tensor) -> torch.Tensor:
    """[N, c] tensor -> [N, c, itemsize] uint8 view of its bits."""
    return t.contiguous().view(torch.uint8).view(*t.shape, t.element_size())


def _from_bytes(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[..., itemsize] uint8 -> [...] of dtype (the inverse of _to_bytes)."""
    return b.contiguous().view(dtype).squeeze(-1)


class _GatherCandidates(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, scores, indices, group):
        N, c = values.shape
        ctx.group, ctx.c, ctx.rank = group, c, group_rank(group)
        parts = (values.detach(), scores, indices.to(torch.int32))
        packed = torch.cat([_to_bytes(p) for p in parts], dim=2)  # [N, c, bytes per candidate]
        gathered = _all_gather_rows(packed, group, "all-gather of top-k candidates")  # [R, N, c, B]
        gathered = gathered.permute(1, 0, 2, 3).reshape(N, -1, packed.shape[2])  # [N, R*c, B]
        out, offset = [], 0
        for p in parts:
            width = p.element_size()
            out.append(_from_bytes(gathered[..., offset:offset + width], p.dtype))
            offset += width
        v, s, i = out[0], out[1], out[2].long()
        ctx.mark_non_differentiable(s, i)
        return v, s, i

    @staticmethod
    def backward(ctx, grad_values, grad_scores, grad_indices):
        if grad_values is None:
            return None, None, None, None
        local = grad_values[:, ctx.rank * ctx.c:(ctx.rank + 1) * ctx.c]
        return local.contiguous(), None, None, None


def gather_candidates(values: torch.Tensor, scores: torch.Tensor, indices: torch.Tensor, group):
    """All-gather every rank's candidates in one collective.

    Args:
        values: [N, c] this rank's candidate values (differentiable, any float dtype).
        scores: [N, c] their selection scores (float32, or float64 for float64 inputs).
        indices: [N, c] int64 global latent indices (below 2**31; sent as int32).
        group: the latent group; c must be the same on every rank.

    Returns:
        (values, scores, indices), each [N, R * c] with rank r's candidates in columns
        [r * c, (r + 1) * c). Only ``values`` carries gradient: backward hands each rank the
        gradient of its own columns, no communication. Traffic per rank: N * c *
        (values + 4 + 4 bytes) sent, R - 1 times that received.
    """
    if group_size(group) == 1:
        return values, scores, indices
    return _GatherCandidates.apply(values, scores, indices, group)
