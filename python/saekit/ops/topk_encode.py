"""TopK encode (SPEC section 1): public entry point, fake implementations and autograd."""

from __future__ import annotations

from typing import NamedTuple

import torch

from saekit.ops import dispatch, reference
from saekit.ops.autograd import topk_encode_autograd
from saekit.ops.validation import check_dead, check_encoder


class TopKOutput(NamedTuple):
    """values [N, k] (dtype of x): relu of the selected pre-activations; indices [N, k] int64."""

    values: torch.Tensor
    indices: torch.Tensor


class TopKAuxOutput(NamedTuple):
    """TopKOutput plus the AuxK selection among dead latents: aux_* [N, k_aux]."""

    values: torch.Tensor
    indices: torch.Tensor
    aux_values: torch.Tensor
    aux_indices: torch.Tensor


def topk_encode(x, W_enc, b_enc, b_dec, k, *, dead=None, k_aux=None, backend="auto"):
    """Sparse TopK encoding: the k largest of ``(x - b_dec) @ W_enc.T + b_enc`` per row.

    Args:
        x: [N, d] activations (float32, bfloat16 or float16).
        W_enc: [M, d] encoder, one row per latent. b_enc: [M]. b_dec: [d].
        k: latents kept per row, 1 <= k <= M.
        dead: optional [M] bool mask of dead latents; with it, ``k_aux`` (0 <= k_aux <=
            dead.sum()) and the AuxK selection among dead latents are returned too.
        backend: "auto", "reference", "cpu", "cuda" or "triton" (see saekit.ops.dispatch).

    Returns:
        TopKOutput(values [N, k], indices [N, k] int64), or TopKAuxOutput with
        aux_values / aux_indices [N, k_aux] when ``dead`` is given. Rows are ordered by
        descending pre-activation, ties by ascending latent index; values = relu(pre).
        Gradients flow into x, W_enc, b_enc and b_dec through values (and aux_values), only
        where the selected pre-activation is positive.

    Memory: the compiled backends never hold the [N, M] pre-activations; the CPU kernel works
    in float32 tiles of at most 1024 x 2048 (8 MB; SAEKIT_CPU_TILE="rows,latents") plus
    O(N * (k + k_aux)) selection state.
    """
    check_encoder(x, W_enc, b_enc, b_dec, k)
    check_dead(dead, k_aux, x, W_enc.shape[0])
    k_aux_ = 0 if dead is None else k_aux
    name = dispatch.choose("topk_encode", backend, x.device, x.dtype, k=max(k, k_aux_))
    if name == "reference":
        out = reference.topk_encode(x, W_enc, b_enc, b_dec, k, dead, k_aux_)
    elif name == "triton":
        from saekit.triton import topk_encode as triton_topk_encode

        out = triton_topk_encode.topk_encode(x, W_enc, b_enc, b_dec, k, dead, k_aux_)
    else:
        out = torch.ops.saekit.topk_encode(x, W_enc, b_enc, b_dec, k, dead, k_aux_)
    if dead is None:
        return TopKOutput(out[0], out[1])
    return TopKAuxOutput(*out)


@torch.library.register_fake("saekit::topk_encode")
def _topk_encode_fake(x, W_enc, b_enc, b_dec, k, dead, k_aux):
    N = x.shape[0]
    k_aux = k_aux if dead is not None else 0
    return (
        x.new_empty(N, k),
        x.new_empty(N, k, dtype=torch.int64),
        x.new_empty(N, k_aux),
        x.new_empty(N, k_aux, dtype=torch.int64),
    )


@torch.library.register_fake("saekit::topk_encode_backward")
def _topk_encode_backward_fake(grad_values, values, indices, x, W_enc, b_dec, check_indices=True):
    # new_empty, not empty_like: the kernels return contiguous gradients for strided inputs too.
    return (
        x.new_empty(x.shape),
        W_enc.new_empty(W_enc.shape),
        W_enc.new_empty(W_enc.shape[0]),
        b_dec.new_empty(b_dec.shape),
    )


_backward, _setup_context = topk_encode_autograd(torch.ops.saekit.topk_encode_backward)
torch.library.register_autograd("saekit::topk_encode", _backward, setup_context=_setup_context)
