"""The pure-torch oracle of SPEC: every formula as written there, dense and slow on purpose.

Gradients come from torch autograd through these expressions, which makes this the oracle for
the other backends' backward passes as well. Products accumulate in float32 (float64 for
float64 inputs); values are returned in the dtype of ``x`` (or of ``values`` for decode).
"""

from __future__ import annotations

import torch


def acc_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def pre_activations(x, W_enc, b_enc, b_dec) -> torch.Tensor:
    """pre = (x - b_dec) @ W_enc.T + b_enc: [N, d], [M, d], [M], [d] -> [N, M] (acc dtype)."""
    acc = acc_dtype(x)
    return (x.to(acc) - b_dec.to(acc)) @ W_enc.to(acc).T + b_enc.to(acc)


def select(score: torch.Tensor, k: int) -> torch.Tensor:
    """The k best columns of each row of score [N, C] -> [N, k] int64.

    Descending score; equal scores by ascending column; NaN above every number. A stable
    descending sort gives exactly that order.
    """
    return torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]


def normalize_grad(grad: torch.Tensor, grad_norm: str) -> torch.Tensor:
    """g of SPEC section 2 in the acc dtype: grad, or grad / ||grad||_2 per row ("token").

    [N, d] -> [N, d]; a zero row stays zero.
    """
    g = grad.detach().to(acc_dtype(grad))
    if grad_norm == "token":
        norm = torch.linalg.vector_norm(g, dim=1, keepdim=True)
        g = torch.where(norm > 0, g / norm.clamp_min(torch.finfo(g.dtype).tiny), 0.0)
    return g


def topk_encode(x, W_enc, b_enc, b_dec, k, dead=None, k_aux=0):
    """SPEC section 1. Returns (values, indices, aux_values, aux_indices).

    x [N, d], W_enc [M, d], b_enc [M], b_dec [d], dead [M] bool or None ->
    values [N, k] (x dtype), indices [N, k] int64, aux_* [N, k_aux] (empty without dead).
    """
    pre = pre_activations(x, W_enc, b_enc, b_dec)
    indices = select(pre.detach(), k)
    values = torch.relu(pre.gather(1, indices)).to(x.dtype)
    N = x.shape[0]
    if dead is None or k_aux == 0:
        aux_indices = torch.empty(N, 0, dtype=torch.int64, device=x.device)
    else:
        n_dead = int(dead.sum())
        if not 0 <= k_aux <= n_dead:
            raise ValueError(f"k_aux must lie in [0, dead.sum()] = [0, {n_dead}], got {k_aux}")
        dead_latents = dead.nonzero().squeeze(1)  # ascending, so ties keep the lower latent
        aux_indices = dead_latents[select(pre.detach()[:, dead_latents], k_aux)]
    aux_values = torch.relu(pre.gather(1, aux_indices)).to(x.dtype)
    return values, indices, aux_values, aux_indices


def gradient_topk_encode(x, g, W_enc, b_enc, W_dec, b_dec, k, beta):
    """SPEC section 2 with g already normalised. Returns (values, indices).

    x [N, d], g [N, d], W_enc [M, d], b_enc [M], W_dec [M, d], b_dec [d] ->
    values [N, k] (x dtype, the plain activations), indices [N, k] int64.
    """
    pre = pre_activations(x, W_enc, b_enc, b_dec)
    with torch.no_grad():
        acc = pre.dtype
        z = torch.relu(pre)
        h = g.to(acc) @ W_dec.to(acc).T
        score = pre + beta * z * h.abs()
    indices = select(score, k)
    values = torch.relu(pre.gather(1, indices)).to(x.dtype)
    return values, indices


def sparse_decode(values, indices, W_dec, b_dec):
    """SPEC section 3: x_hat[n] = sum_j values[n, j] * W_dec[indices[n, j]] + b_dec.

    values [N, k], indices [N, k] int64, W_dec [M, d], b_dec [d] -> x_hat [N, d] (values dtype).
    """
    acc = acc_dtype(values)
    rows = W_dec.to(acc)[indices]  # [N, k, d]
    x_hat = (values.to(acc).unsqueeze(-1) * rows).sum(1) + b_dec.to(acc)
    return x_hat.to(values.dtype)
