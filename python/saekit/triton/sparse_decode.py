"""Sparse decode on Triton: custom ops ``saekit_triton::{sparse_decode, sparse_decode_backward}``
with fakes and autograd, and the entry point saekit.ops calls."""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.ops.autograd import sparse_decode_autograd
from saekit.ops.validation import check_indices_range
from saekit.triton import on_device_of
from saekit.triton.sparse_kernels import gather_dot, gather_sum, scatter_rows


@torch.library.custom_op("saekit_triton::sparse_decode", mutates_args=())
def _sparse_decode_op(values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor, check_indices: bool = True) -> Tensor:
    if check_indices:
        check_indices_range(indices, W_dec.shape[0])
    values, indices, W_dec, b_dec = (t.contiguous() for t in (values, indices, W_dec, b_dec))
    with on_device_of(values):
        return gather_sum(values, indices, W_dec, b_dec)


@_sparse_decode_op.register_fake
def _(values, indices, W_dec, b_dec, check_indices=True):
    return values.new_empty(values.shape[0], W_dec.shape[1])


@torch.library.custom_op("saekit_triton::sparse_decode_backward", mutates_args=())
def _sparse_decode_backward_op(
    grad_out: Tensor, values: Tensor, indices: Tensor, W_dec: Tensor, check_indices: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    if check_indices:
        check_indices_range(indices, W_dec.shape[0])
    grad_out, values, indices, W_dec = (t.contiguous() for t in (grad_out, values, indices, W_dec))
    with on_device_of(values):
        dvalues = gather_dot(grad_out, indices, W_dec).to(values.dtype)
        dW_dec = scatter_rows(values, indices, grad_out, W_dec.shape[0]).to(W_dec.dtype)
    db_dec = grad_out.float().sum(0).to(W_dec.dtype)
    return dvalues, dW_dec, db_dec


@_sparse_decode_backward_op.register_fake
def _(grad_out, values, indices, W_dec, check_indices=True):
    return values.new_empty(values.shape), W_dec.new_empty(W_dec.shape), W_dec.new_empty(W_dec.shape[1])


_backward, _setup_context = sparse_decode_autograd(torch.ops.saekit_triton.sparse_decode_backward)
_sparse_decode_op.register_autograd(_backward, setup_context=_setup_context)


def sparse_decode(values, indices, W_dec, b_dec, check_indices=True):
    """SPEC section 3 on Triton (arguments already validated by saekit.ops).

    values [N, k], indices [N, k] int64 in [0, M), W_dec [M, d], b_dec [d] -> x_hat [N, d] in
    the dtype of values. Differentiable in values, W_dec and b_dec; reads only the k selected
    rows per token. The W_dec gradient accumulates in float32 (atomics) and is cast once.

    Raises ValueError for an index outside [0, M) before any kernel runs, unless check_indices
    is false (indices that saekit's encoder selected).
    """
    return torch.ops.saekit_triton.sparse_decode(values, indices, W_dec, b_dec, check_indices)
