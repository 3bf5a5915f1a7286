"""The sparse backward of the three ops, written once for every namespace that registers them
(``saekit`` for the compiled kernels, ``saekit_triton`` for Triton): each function below takes
that namespace's backward op and returns the ``(backward, setup_context)`` pair for
``register_autograd``.

The encoders' backward runs from the N x k nonzeros (plus the N x k_aux AuxK ones when they
carry a gradient); the decode backward from the N x k code. Neither ever forms an N x M matrix.
Neither checks the index range again (``check_indices=False``, no host sync): the encoders'
indices come from their own selection, the decode's were checked by its forward, and autograd
refuses saved tensors that were modified in place since.
"""

from __future__ import annotations

from typing import Callable

import torch


def _encoder_backward(backward_op, grad_values, values, indices, x, W_enc, b_dec):
    """(dx [N, d], dW_enc [M, d], db_enc [M], db_dec [d]); a None gradient counts as zero."""
    if grad_values is None:
        grad_values = values.new_zeros(values.shape)
    return backward_op(grad_values, values, indices, x, W_enc, b_dec, check_indices=False)


def topk_encode_autograd(backward_op: Callable) -> tuple[Callable, Callable]:
    """Autograd of ``topk_encode(x, W_enc, b_enc, b_dec, k, dead, k_aux) -> (values, indices,
    aux_values, aux_indices)``: the AuxK selection's gradient joins the main one, as k_aux
    more nonzeros per row."""

    def setup_context(ctx, inputs, output):
        x, W_enc, b_enc, b_dec, k, dead, k_aux = inputs
        values, indices, aux_values, aux_indices = output
        ctx.save_for_backward(x, W_enc, b_dec, values, indices, aux_values, aux_indices)

    def backward(ctx, grad_values, grad_indices, grad_aux_values, grad_aux_indices):
        x, W_enc, b_dec, values, indices, aux_values, aux_indices = ctx.saved_tensors
        if grad_aux_values is not None and aux_values.shape[1] > 0:
            if grad_values is None:
                grad_values = values.new_zeros(values.shape)
            grad_values = torch.cat([grad_values, grad_aux_values], 1)
            values = torch.cat([values, aux_values], 1)
            indices = torch.cat([indices, aux_indices], 1)
        dx, dW_enc, db_enc, db_dec = _encoder_backward(backward_op, grad_values, values, indices, x, W_enc, b_dec)
        return dx, dW_enc, db_enc, db_dec, None, None, None

    return backward, setup_context


def gradient_topk_encode_autograd(backward_op: Callable) -> tuple[Callable, Callable]:
    """Autograd of ``gradient_topk_encode(x, g, W_enc, b_enc, W_dec, b_dec, k, beta) -> (values,
    indices)``: the selection is a constant, so g and W_dec get no gradient; the values are
    relu(pre) at the selected latents, whose backward is the TopK encoder's."""

    def setup_context(ctx, inputs, output):
        x, g, W_enc, b_enc, W_dec, b_dec, k, beta = inputs
        values, indices = output
        ctx.save_for_backward(x, W_enc, b_dec, values, indices)

    def backward(ctx, grad_values, grad_indices):
        x, W_enc, b_dec, values, indices = ctx.saved_tensors
        dx, dW_enc, db_enc, db_dec = _encoder_backward(backward_op, grad_values, values, indices, x, W_enc, b_dec)
        return dx, None, dW_enc, db_enc, None, db_dec, None, None

    return backward, setup_context


def sparse_decode_autograd(backward_op: Callable) -> tuple[Callable, Callable]:
    """Autograd of ``sparse_decode(values, indices, W_dec, b_dec, check_indices) -> x_hat``."""

    def setup_context(ctx, inputs, output):
        values, indices, W_dec, b_dec, check_indices = inputs
        ctx.save_for_backward(values, indices, W_dec)

    def backward(ctx, grad_out):
        values, indices, W_dec = ctx.saved_tensors
        dvalues, dW_dec, db_dec = backward_op(grad_out, values, indices, W_dec, check_indices=False)
        return dvalues, None, dW_dec, db_dec, None

    return backward, setup_context

