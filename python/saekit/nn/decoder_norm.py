"""Keeping decoder rows at unit norm during training (Gao et al. 2024; Bricken et al. 2023)."""

from __future__ import annotations

import torch


@torch.no_grad()
def normalize_rows_(W_dec: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each row of W_dec [M, d] to unit L2 norm, in place (a zero row stays zero)."""
    norms = torch.linalg.vector_norm(W_dec.float(), dim=1, keepdim=True)
    W_dec.div_(norms.clamp_min(eps).to(W_dec.dtype))
    return W_dec


@torch.no_grad()
def remove_parallel_gradient_(W_dec: torch.Tensor, eps: float = 1e-12) -> None:
    """Remove from W_dec.grad [M, d] its component along each decoder row, in place.

    With unit-norm rows the update then moves only tangentially to the sphere, so the
    renormalisation after the optimiser step undoes little of it. No-op without a gradient.
    """
    grad = W_dec.grad
    if grad is None:
        return
    w = W_dec.float()
    g = grad.float()
    parallel = (g * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True).clamp_min(eps)
    grad.copy_((g - parallel * w).to(grad.dtype))
