"""Shape and dtype plumbing shared by the layers: flatten [..., d] inputs, honour autocast."""

from __future__ import annotations

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an op on ``x`` runs in: autocast's lower precision when autocast is on for
    ``x``'s device (as for a matmul), else ``x``'s own dtype."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and x.dtype == torch.float32:
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def cast(dtype: torch.dtype, *tensors):
    """Each tensor cast to ``dtype`` (None and non-floating tensors pass through unchanged).

    The casts are differentiable, so gradients reach float32 master weights under autocast.
    """
    return tuple(
        t if t is None or not t.is_floating_point() or t.dtype == dtype else t.to(dtype) for t in tensors
    )


def flatten_rows(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """[..., d] -> [N, d] with N the product of the leading dims (a view where possible)."""
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension [..., d], got a scalar")
    return x.reshape(x.shape[:-1].numel(), x.shape[-1])


def unflatten_rows(t: torch.Tensor, leading: torch.Size) -> torch.Tensor:
    """[N, w] -> [*leading, w]."""
    return t.reshape(*leading, t.shape[-1])
