"""BatchTopK (Bussmann et al. 2024): the k * N largest activations across the whole batch."""

from __future__ import annotations

import torch
from torch import nn

from saekit.nn._casting import cast, compute_dtype, flatten_rows, unflatten_rows
from saekit.nn.sparse_code import SparseCode
from saekit.ops.topk_encode import topk_encode


class BatchTopK(nn.Module):
    """Keep the ``k * N`` largest activations of a batch of N rows, wherever they fall.

    In training mode the selection is batch-wide; every call also moves the learned global
    ``threshold`` (a buffer) towards the smallest activation kept, by exponential averaging.
    In eval mode each row keeps its activations above ``threshold`` (no batch dependence),
    as Bussmann et al. do at inference.

    ``layer(x, W_enc, b_enc, b_dec)``: x [..., d], W_enc [M, d], b_enc [M], b_dec [d] ->
    SparseCode(values [..., w], indices [..., w]) where w is the largest number of latents
    any row kept; rows that kept fewer are padded with zero values. The selection is exact
    and sparse: each row's top ``cap`` candidates come from the fused TopK encode (starting at
    cap = 4k) and cap doubles while some row has all its candidates kept. ``w`` depends on the
    data, so this layer breaks a ``torch.compile`` graph (TopK does not).
    """

    def __init__(self, k: int, *, momentum: float = 0.01, backend: str = "auto"):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.k = k
        self.momentum = float(momentum)
        if not 0.0 <= self.momentum <= 1.0:  # NaN fails too
            raise ValueError(f"momentum must lie in [0, 1], got {momentum!r}")
        self.backend = backend
        self.register_buffer("threshold", torch.zeros(()))

    def extra_repr(self) -> str:
        return f"k={self.k}, momentum={self.momentum}, threshold={self.threshold.item():.4g}"

    def forward(self, x, W_enc, b_enc, b_dec) -> SparseCode:
        """x [..., d], W_enc [M, d], b_enc [M], b_dec [d] -> SparseCode [..., w] (see the class)."""
        leading = x.shape[:-1]
        dtype = compute_dtype(x)
        x2, W_enc, b_enc, b_dec = cast(dtype, flatten_rows(x), W_enc, b_enc, b_dec)
        N, M = x2.shape[0], W_enc.shape[0]
        if self.k > M:
            raise ValueError(f"k must lie in [1, M] with M = {M} (the rows of W_enc), got {self.k}")
        if N == 0:
            empty = topk_encode(x2, W_enc, b_enc, b_dec, min(self.k, M), backend=self.backend)
            return SparseCode(unflatten_rows(empty.values, leading), unflatten_rows(empty.indices, leading))
        cap = min(M, 4 * self.k)
        while True:
            values, indices = topk_encode(x2, W_enc, b_enc, b_dec, cap, backend=self.backend)
            keep = self._keep(values.detach())
            saturated = bool(keep[:, -1].any())
            if not saturated or cap == M:
                break
            cap = min(M, 2 * cap)
        if self.training:
            self._update_threshold(values.detach(), keep)
        width = max(int(keep.sum(1).max()), 1)
        values = torch.where(keep, values, 0)[:, :width]
        code = SparseCode(unflatten_rows(values, leading), unflatten_rows(indices[:, :width], leading))
        return code

    def _keep(self, values: torch.Tensor) -> torch.Tensor:
        """[N, cap] bool: which candidates the batch (training) or the threshold (eval) keeps.

        Each row's candidates are sorted descending, so the kept ones form a prefix of it.
        """
        positive = values > 0
        if not self.training:
            return positive & (values.float() > self.threshold)
        flat = values.float().reshape(-1)
        n_keep = min(self.k * values.shape[0], flat.numel())
        order = torch.sort(flat, descending=True, stable=True).indices[:n_keep]
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[order] = True
        return keep.reshape(values.shape) & positive

    @torch.no_grad()
    def _update_threshold(self, values: torch.Tensor, keep: torch.Tensor) -> None:
        """Once per training forward: move ``threshold`` towards the smallest value kept (the
        first update sets it)."""
        if keep.any():
            smallest = values.float()[keep].min().to(self.threshold.dtype)
            first = bool(self.threshold == 0)
            self.threshold.copy_(smallest) if first else self.threshold.lerp_(smallest, self.momentum)
