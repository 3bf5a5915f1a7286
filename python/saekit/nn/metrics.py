"""Reconstruction metrics and the AuxK loss, written once for trainers and evaluation."""

from __future__ import annotations

import torch

from saekit.nn._casting import flatten_rows


def _pair(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x and x_hat [..., d] of one shape (never broadcast) as float32 [N, d] rows."""
    if isinstance(x, torch.Tensor) and isinstance(x_hat, torch.Tensor) and x.shape != x_hat.shape:
        raise ValueError(f"x_hat must have the shape of x {list(x.shape)}, got {list(x_hat.shape)}")
    return flatten_rows(x).float(), flatten_rows(x_hat, "x_hat").float()


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2.

    x, x_hat: [..., d]; the mean is over all rows. Returns a float32 scalar (differentiable).
    0 is perfect; 1 is no better than predicting the mean activation.
    """
    x2, x_hat2 = _pair(x, x_hat)
    total = (x2 - x2.mean(0)).pow(2).sum()
    return (x2 - x_hat2).pow(2).sum() / total.clamp_min(torch.finfo(torch.float32).tiny)


def normalized_mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """sum ||x - x_hat||^2 / sum ||x||^2 (OpenAI's normalised MSE): x, x_hat [..., d] -> scalar."""
    x2, x_hat2 = _pair(x, x_hat)
    return (x2 - x_hat2).pow(2).sum() / x2.pow(2).sum().clamp_min(torch.finfo(torch.float32).tiny)


def auxk_loss(residual: torch.Tensor, aux_reconstruction: torch.Tensor) -> torch.Tensor:
    """AuxK loss of Gao et al. 2024, before its coefficient (they use 1/32).

    residual: [..., d] the main reconstruction error x - x_hat, treated as a constant.
    aux_reconstruction: [..., d] the decode of the top-k_aux dead latents without the decoder
    bias. Returns the FVU of predicting the residual: ||e - e_hat||^2 / ||e - mean(e)||^2, which
    is 0 when there is nothing to predict (no rows), so the loss stays scale-free.
    """
    return fvu(residual.detach(), aux_reconstruction) if residual.numel() else residual.new_zeros(())
