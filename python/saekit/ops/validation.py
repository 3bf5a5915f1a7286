"""Argument checks of SPEC section 4, run once in Python before any backend is chosen.

Every check here depends on shapes, dtypes and devices only, so it costs nothing on the device
and traces under ``torch.compile``. Data-dependent checks (index range, ``k_aux <= dead.sum()``)
happen inside the kernels, before they read anything.
"""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
GRAD_NORMS = ("none", "token")


def _check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def check_float(t, name: str) -> None:
    """TypeError unless ``t`` is a float32, bfloat16 or float16 tensor."""
    _check_tensor(t, name)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float32, bfloat16, float16, or float64 on the reference "
            f"and cpu backends), got {t.dtype}"
        )


def check_shape(t: torch.Tensor, shape: tuple, name: str, notation: str) -> None:
    """ValueError unless ``t`` has ``shape`` (written ``notation``, e.g. "[M, d]", in the message)."""
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {notation} = {list(shape)}, got {list(t.shape)}")


def check_same(
    x: torch.Tensor, t: torch.Tensor, name: str, *, dtype: bool = True, ref: str = "x"
) -> None:
    """``t`` must share the device (and, with ``dtype``, the dtype) of ``x``."""
    if dtype and t.dtype != x.dtype:
        raise TypeError(f"{name} must have the dtype of {ref} ({x.dtype}), got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} must be on the device of {ref} ({x.device}), got {t.device}")


def check_k(k, M: int, name: str = "k", low: int = 1) -> None:
    """``k`` must be an int in [low, M]."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if not low <= k <= M:
        raise ValueError(f"{name} must lie in [{low}, M] with M = {M}, got {k}")


def check_encoder(x, W_enc, b_enc, b_dec, k) -> None:
    """x [N, d], W_enc [M, d], b_enc [M], b_dec [d], 1 <= k <= M."""
    check_float(x, "x")
    if x.dim() != 2:
        raise ValueError(f"x must have shape [N, d], got {list(x.shape)}")
    for t, name in ((W_enc, "W_enc"), (b_enc, "b_enc"), (b_dec, "b_dec")):
        check_float(t, name)
    N, d = x.shape
    if W_enc.dim() != 2 or W_enc.shape[1] != d:
        raise ValueError(f"W_enc must have shape [M, d] with d = {d}, got {list(W_enc.shape)}")
    M = W_enc.shape[0]
    check_shape(b_enc, (M,), "b_enc", "[M]")
    check_shape(b_dec, (d,), "b_dec", "[d]")
    for t, name in ((W_enc, "W_enc"), (b_enc, "b_enc"), (b_dec, "b_dec")):
        check_same(x, t, name)
    check_k(k, M)


def check_dead(dead, k_aux, x: torch.Tensor, M: int) -> None:
    """dead [M] bool; 0 <= k_aux <= M (the kernels check k_aux <= dead.sum())."""
    if dead is None:
        if k_aux is not None:
            raise ValueError("k_aux is given but dead is None: pass the dead-latent mask [M]")
        return
    _check_tensor(dead, "dead")
    if dead.dtype != torch.bool:
        raise TypeError(f"dead must be a bool tensor of shape [M], got {dead.dtype}")
    check_shape(dead, (M,), "dead", "[M]")
    check_same(x, dead, "dead", dtype=False)
    if k_aux is None:
        raise ValueError("k_aux is required when dead is given (0 <= k_aux <= dead.sum())")
    check_k(k_aux, M, "k_aux", low=0)


def check_gradient(grad, W_dec, x: torch.Tensor, W_enc: torch.Tensor, beta, grad_norm) -> None:
    """grad [N, d] (any floating dtype), W_dec [M, d], finite beta, grad_norm in GRAD_NORMS."""
    check_float(grad, "grad")
    check_shape(grad, tuple(x.shape), "grad", "[N, d]")
    check_same(x, grad, "grad", dtype=False)
    check_float(W_dec, "W_dec")
    check_shape(W_dec, tuple(W_enc.shape), "W_dec", "[M, d]")
    check_same(x, W_dec, "W_dec")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a float, got {type(beta).__name__}")
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    if grad_norm not in GRAD_NORMS:
        raise ValueError(f"grad_norm must be one of {GRAD_NORMS}, got {grad_norm!r}")


def check_sparse_code(values, indices, W_dec, b_dec) -> None:
    """values [N, k] floating, indices [N, k] int64, W_dec [M, d], b_dec [d]."""
    check_float(values, "values")
    _check_tensor(indices, "indices")
    if indices.dtype != torch.int64:
        raise TypeError(f"indices must be an int64 tensor, got {indices.dtype}")
    if values.dim() != 2:
        raise ValueError(f"values must have shape [N, k], got {list(values.shape)}")
    check_shape(indices, tuple(values.shape), "indices", "[N, k] (the shape of values)")
    check_float(W_dec, "W_dec")
    if W_dec.dim() != 2:
        raise ValueError(f"W_dec must have shape [M, d], got {list(W_dec.shape)}")
    check_float(b_dec, "b_dec")
    check_shape(b_dec, (W_dec.shape[1],), "b_dec", "[d]")
    for t, name in ((W_dec, "W_dec"), (b_dec, "b_dec")):
        check_same(values, t, name, ref="values")
    check_same(values, indices, "indices", dtype=False, ref="values")


def check_indices_range(indices: torch.Tensor, M: int) -> None:
    """Eager check that every index lies in [0, M): one device sync (min and max in one copy).
    Skipped while torch.compile traces; ``checked_indices`` is the check a graph keeps."""
    if indices.numel() and not torch.compiler.is_compiling():
        lo, hi = torch.stack(torch.aminmax(indices)).tolist()
        if lo < 0 or hi >= M:
            raise ValueError(f"indices must lie in [0, M) with M = {M}, got values in [{lo}, {hi}]")


@torch.library.custom_op("saekit_checks::checked_indices", mutates_args=())
def checked_indices(indices: torch.Tensor, M: int) -> torch.Tensor:
    """A copy of indices [N, k] once check_indices_range passed: the range check as an op, so
    that a compiled graph runs it too (for the reference backend, which has no kernel to check
    in; the compiled backends' ops check inside)."""
    check_indices_range(indices, M)
    return indices.clone()


@checked_indices.register_fake
def _(indices, M):
    return torch.empty_like(indices)
