"""Gradient-TopK encode (SPEC section 2): public entry point, fake and autograd."""

from __future__ import annotations

import torch

from saekit.ops import dispatch, reference
from saekit.ops.autograd import gradient_topk_encode_autograd
from saekit.ops.topk_encode import TopKOutput
from saekit.ops.validation import check_encoder, check_gradient


def gradient_topk_encode(
    x, grad, W_enc, b_enc, W_dec, b_dec, k, *, beta=1.0, grad_norm="none", backend="auto"
):
    """g-SAE encoding: keep the k latents that would move the downstream loss most.

    score = pre + beta * relu(pre) * |g @ W_dec.T| with pre = (x - b_dec) @ W_enc.T + b_enc,
    so wherever pre > 0 the score is relu(pre) * (1 + beta * |h|) and elsewhere pre itself.

    Args:
        x: [N, d] activations. grad: [N, d] gradient of the downstream loss with respect to x,
            treated as a constant (no gradient flows into it).
        W_enc: [M, d]. b_enc: [M]. W_dec: [M, d] decoder rows. b_dec: [d].
        k: latents kept per row, 1 <= k <= M.
        beta: weight of the gradient term (finite; 0 gives TopK's selection). Default 1.0.
        grad_norm: "none" uses grad as given; "token" divides each row by its L2 norm (a zero
            row stays zero), which makes beta independent of the loss scale.
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        TopKOutput(values [N, k] = relu(pre) at the selection, indices [N, k] int64), ordered
        by descending score, ties by ascending latent index. Gradients flow into x, W_enc,
        b_enc and b_dec exactly as for topk_encode; none into grad, W_dec or beta.
    """
    check_encoder(x, W_enc, b_enc, b_dec, k)
    check_gradient(grad, W_dec, x, W_enc, beta, grad_norm)
    g = reference.normalize_grad(grad, grad_norm)
    beta = float(beta)
    name = dispatch.choose("gradient_topk_encode", backend, x.device, x.dtype, k=k)
    if name == "reference":
        out = reference.gradient_topk_encode(x, g, W_enc, b_enc, W_dec, b_dec, k, beta)
    elif name == "triton":
        from saekit.triton import topk_encode as triton_topk_encode

        out = triton_topk_encode.gradient_topk_encode(x, g, W_enc, b_enc, W_dec, b_dec, k, beta)
    else:
        out = torch.ops.saekit.gradient_topk_encode(x, g, W_enc, b_enc, W_dec, b_dec, k, beta)
    return TopKOutput(out[0], out[1])


@torch.library.register_fake("saekit::gradient_topk_encode")
def _gradient_topk_encode_fake(x, g, W_enc, b_enc, W_dec, b_dec, k, beta):
    N = x.shape[0]
    return x.new_empty(N, k), x.new_empty(N, k, dtype=torch.int64)


_backward, _setup_context = gradient_topk_encode_autograd(torch.ops.saekit.topk_encode_backward)
torch.library.register_autograd("saekit::gradient_topk_encode", _backward, setup_context=_setup_context)
