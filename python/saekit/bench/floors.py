"""Physical floors that ``saekit bench`` reports each timing against, measured on this device.

- encode: the plain GEMM ``x @ W_enc.T`` of the same shape and dtype (the selection is extra
  work on top of it); gradient-TopK encode: two such GEMMs; the SAE training step: one GEMM
  (its backward is sparse, so the encoder's forward product is the part no method avoids).
- decode forward+backward: the bytes it must move at the measured device copy bandwidth.
"""

from __future__ import annotations

import torch

from saekit.bench import harness


def copy_bandwidth(device: torch.device, n_bytes: int | None = None) -> float:
    """Measured bytes/s of a large device-to-same-device copy (read + write counted)."""
    if n_bytes is None:
        n_bytes = (1 << 30) if device.type == "cuda" else (1 << 28)
    a = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    b = torch.empty_like(a)
    t = harness.bench("copy", lambda i: b.copy_(a), device=str(device), repeats=5, peak=False)
    return 2 * n_bytes / t.median_s


def gemm_seconds(x: torch.Tensor, W: torch.Tensor, repeats: int) -> float:
    """Median seconds of x @ W.T: x [N, d], W [M, d]."""
    return harness.bench("gemm", lambda i: x @ W.T, device=str(x.device), repeats=repeats, peak=False).median_s


def decode_bytes(N: int, d: int, M: int, k: int, elem: int) -> int:
    """Bytes sparse decode forward+backward must move at least, elements of ``elem`` bytes.

    Forward: values and indices (N k (elem + 8)), the k decoder rows of each token (N k d elem),
    x_hat written (N d elem). Backward: grad_out read (N d elem), the k rows read again for the
    value gradients (N k d elem), dvalues written (N k elem), dW_dec written (M d elem), db_dec
    (d elem). Accumulation traffic of dW_dec beyond one write is not counted: the floor is what
    any method must move.
    """
    forward = N * k * (elem + 8) + N * k * d * elem + N * d * elem
    backward = N * d * elem + N * k * d * elem + N * k * elem + M * d * elem + d * elem
    return forward + backward
