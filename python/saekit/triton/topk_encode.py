"""TopK and g-SAE encode on Triton: custom ops ``saekit_triton::{topk_encode,
gradient_topk_encode, topk_encode_backward}`` with fakes and autograd, and their entry points.

Forward: the fused kernel of saekit.triton.encode_kernel writes each latent split's best packed
keys; one torch.topk over the [N, splits * K_PAD] int64 candidates merges them exactly.
Backward: from the N x k nonzeros only (saekit.triton.sparse_kernels).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from saekit.ops.autograd import gradient_topk_encode_autograd, topk_encode_autograd
from saekit.ops.validation import check_indices_range
from saekit.triton import MAX_K, on_device_of
from saekit.triton.encode_kernel import folded_bias, select_keys
from saekit.triton.keys import MAX_LATENTS, key_latents, key_scores
from saekit.triton.sparse_kernels import gather_dot, gather_sum, scatter_rows


def check_k(k: int, name: str = "k") -> None:
    """The fused encoder keeps at most MAX_K keys per row (and per AuxK row)."""
    if k > MAX_K:
        raise ValueError(f"{name} must be at most {MAX_K} for the triton backend, got {k}; "
                         "use backend='cuda', 'cpu' or 'reference' for larger values")


def _merge_splits(keys: Tensor, k: int) -> Tensor:
    """keys [N, S, K_PAD] (each split sorted descending) -> the k best per row [N, k]."""
    N, S, K_PAD = keys.shape
    if S == 1:
        return keys[:, 0, :k]
    return torch.topk(keys.view(N, S * K_PAD), k, dim=1).values


def g_operand(g: Tensor, dtype: torch.dtype) -> tuple[Tensor, Optional[Tensor]]:
    """g [N, d] rounded to dtype so that h = g @ W_dec.T runs on tensor cores, and None; for
    float16, whose range is narrow, each row is first divided by a power of two that brings its
    largest entry into [0.5, 1) (exact), and those powers come back as [N] float32 to multiply
    h by, so that large gradients do not overflow nor small ones flush to zero."""
    if dtype != torch.float16:
        return g.to(dtype), None
    g = g.float()
    # The row's largest finite magnitude (inf and NaN entries stay inf and NaN whatever the scale,
    # while finite ones beside them must still fit float16); 0 for none.
    finite = torch.where(torch.isfinite(g), g.abs(), 0.0)
    amax = finite.amax(1, keepdim=True) if g.shape[1] else g.new_zeros(g.shape[0], 1)
    # 2^exponent, at most 2^127 (finite), 1 for a row without a finite nonzero entry.
    exponent = torch.frexp(amax)[1].clamp_max(127)
    scale = torch.ldexp(torch.ones_like(amax), exponent)
    return (g / scale).to(dtype), scale.reshape(-1).contiguous()


def _inputs(*tensors):
    return [t.contiguous() for t in tensors]


def encoder_operands(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor) -> tuple[Tensor, Tensor]:
    """(a [N, d], c [M] float32) with pre = a @ W_enc.T + c: for float32 inputs a = x - b_dec and
    c = b_enc, as the reference computes (x near b_dec, where training brings it, would cancel in
    the folded form); for 16-bit inputs a = x and the folded c = b_enc - W_enc @ b_dec, so that
    the product runs on tensor cores from the inputs as they are."""
    if x.dtype == torch.float32:
        return (x - b_dec).contiguous(), b_enc.float().contiguous()
    return x, folded_bias(W_enc, b_enc, b_dec)


@torch.library.custom_op("saekit_triton::topk_encode", mutates_args=())
def _topk_encode_op(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int, dead: Optional[Tensor], k_aux: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x, W_enc, b_enc, b_dec = _inputs(x, W_enc, b_enc, b_dec)
    N, M = x.shape[0], W_enc.shape[0]
    if M > MAX_LATENTS:
        raise ValueError(f"the triton backend takes at most {MAX_LATENTS} latents (31-bit keys); M = {M}")
    aux = dead is not None and k_aux > 0
    if aux and k_aux > int(dead.sum()):
        raise ValueError(f"k_aux must lie in [0, dead.sum()] = [0, {int(dead.sum())}], got {k_aux}")
    with on_device_of(x):
        a, c = encoder_operands(x, W_enc, b_enc, b_dec)
        keys, aux_keys = select_keys(a, W_enc, c, k, dead=dead.contiguous() if aux else None, k_aux=k_aux)
    top = _merge_splits(keys, k)
    values = torch.relu(key_scores(top)).to(x.dtype)
    if not aux:
        return values, key_latents(top), x.new_empty(N, 0), x.new_empty(N, 0, dtype=torch.int64)
    aux_top = _merge_splits(aux_keys, k_aux)
    return values, key_latents(top), torch.relu(key_scores(aux_top)).to(x.dtype), key_latents(aux_top)


@_topk_encode_op.register_fake
def _(x, W_enc, b_enc, b_dec, k, dead, k_aux):
    N = x.shape[0]
    k_aux = k_aux if dead is not None else 0
    return (x.new_empty(N, k), x.new_empty(N, k, dtype=torch.int64),
            x.new_empty(N, k_aux), x.new_empty(N, k_aux, dtype=torch.int64))


@torch.library.custom_op("saekit_triton::gradient_topk_encode", mutates_args=())
def _gradient_topk_encode_op(
    x: Tensor, g: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, k: int, beta: float
) -> tuple[Tensor, Tensor]:
    g, g_scale = g_operand(g, W_dec.dtype)
    x, g, W_enc, b_enc, W_dec, b_dec = _inputs(x, g, W_enc, b_enc, W_dec, b_dec)
    if W_enc.shape[0] > MAX_LATENTS:
        raise ValueError(f"the triton backend takes at most {MAX_LATENTS} latents (31-bit keys); "
                         f"M = {W_enc.shape[0]}")
    with on_device_of(x):
        a, c = encoder_operands(x, W_enc, b_enc, b_dec)
        keys, _ = select_keys(a, W_enc, c, k, g=g, g_scale=g_scale, W_dec=W_dec, beta=beta)
        indices = key_latents(_merge_splits(keys, k))
        # The keys hold scores; the values are the plain activations at the selection.
        values = torch.relu(gather_dot(a, indices, W_enc, c)).to(x.dtype)
    return values, indices


@_gradient_topk_encode_op.register_fake
def _(x, g, W_enc, b_enc, W_dec, b_dec, k, beta):
    N = x.shape[0]
    return x.new_empty(N, k), x.new_empty(N, k, dtype=torch.int64)


@torch.library.custom_op("saekit_triton::topk_encode_backward", mutates_args=())
def _topk_encode_backward_op(
    grad_values: Tensor, values: Tensor, indices: Tensor, x: Tensor, W_enc: Tensor, b_dec: Tensor,
    check_indices: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    values, indices, x, W_enc, b_dec = _inputs(values, indices, x, W_enc, b_dec)
    M = W_enc.shape[0]
    if check_indices:
        check_indices_range(indices, M)
    dpre = torch.where(values > 0, grad_values.float(), 0.0).contiguous()
    with on_device_of(x):
        dx = gather_sum(dpre, indices, W_enc, out_dtype=torch.float32)
        dW_enc = scatter_rows(dpre, indices, x, M, sub=b_dec)
    db_enc = torch.zeros(M, dtype=torch.float32, device=x.device).index_add_(0, indices.flatten(), dpre.flatten())
    db_dec = -dx.sum(0)
    return dx.to(x.dtype), dW_enc.to(W_enc.dtype), db_enc.to(W_enc.dtype), db_dec.to(b_dec.dtype)


@_topk_encode_backward_op.register_fake
def _(grad_values, values, indices, x, W_enc, b_dec, check_indices=True):
    return x.new_empty(x.shape), W_enc.new_empty(W_enc.shape), W_enc.new_empty(W_enc.shape[0]), b_dec.new_empty(b_dec.shape)


_backward, _setup = topk_encode_autograd(torch.ops.saekit_triton.topk_encode_backward)
_topk_encode_op.register_autograd(_backward, setup_context=_setup)
_backward, _setup = gradient_topk_encode_autograd(torch.ops.saekit_triton.topk_encode_backward)
_gradient_topk_encode_op.register_autograd(_backward, setup_context=_setup)


def topk_encode(x, W_enc, b_enc, b_dec, k, dead, k_aux):
    """SPEC section 1 on Triton (arguments already validated by saekit.ops).

    x [N, d], W_enc [M, d], b_enc [M], b_dec [d], k <= MAX_K, dead [M] bool or None,
    k_aux <= MAX_K (0 without dead) -> (values [N, k], indices [N, k] int64,
    aux_values [N, k_aux], aux_indices [N, k_aux] int64). Differentiable in x, W_enc, b_enc,
    b_dec through values and aux_values.

    Memory: per program one [BLOCK_N, TILE] float32 score tile and [BLOCK_N, next_pow2(k)]
    int64 keys (tiles of at most 256 latents); globally [N, splits, next_pow2(k)] int64
    candidates. Never N x M.
    """
    check_k(k)
    check_k(k_aux, "k_aux")
    return torch.ops.saekit_triton.topk_encode(x, W_enc, b_enc, b_dec, k, dead, k_aux)


def gradient_topk_encode(x, g, W_enc, b_enc, W_dec, b_dec, k, beta):
    """SPEC section 2 on Triton with g already normalised (float32 or the dtype of x).

    x [N, d], g [N, d], W_enc [M, d], b_enc [M], W_dec [M, d], b_dec [d], k <= MAX_K, beta
    -> (values [N, k] = relu(pre) at the selection, indices [N, k] int64). Differentiable in
    x, W_enc, b_enc, b_dec; g is rounded to the dtype of W_dec for the h product.

    Memory: as topk_encode, with a second [BLOCK_N, TILE] float32 tile for h.
    """
    check_k(k)
    return torch.ops.saekit_triton.gradient_topk_encode(x, g, W_enc, b_enc, W_dec, b_dec, k, float(beta))
