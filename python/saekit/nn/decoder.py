"""SparseDecoder: a linear decoder that reads only the k selected rows per token."""

from __future__ import annotations

import torch
from torch import nn

from saekit.nn._casting import cast, compute_dtype, flatten_rows, unflatten_rows
from saekit.nn.sparse_code import SparseCode
from saekit.ops.sparse_decode import decode_rows


def decode(code: SparseCode, W_dec: torch.Tensor, b_dec: torch.Tensor | None, backend: str = "auto", *,
           check_indices: bool = True):
    """x_hat [..., d] = sum_j values[..., j] * W_dec[indices[..., j]] + b_dec.

    code: SparseCode with values and indices [..., k]. W_dec: [M, d]. b_dec: [d] or None.
    Works from the N x k nonzeros only (saekit.ops.sparse_decode); honours autocast.
    check_indices=False skips the index range check (a host sync): only for a code that
    saekit's encoder just selected.
    """
    values, indices = code
    leading = values.shape[:-1]
    if b_dec is None:
        b_dec = W_dec.new_zeros(W_dec.shape[1])
    dtype = compute_dtype(values)
    v2, W_dec, b_dec = cast(dtype, flatten_rows(values, "values"), W_dec, b_dec)
    x_hat = decode_rows(v2, flatten_rows(indices, "indices"), W_dec, b_dec, backend=backend,
                        check_indices=check_indices)
    return unflatten_rows(x_hat, leading)


class SparseDecoder(nn.Module):
    """Decoder of a sparse code: ``weight`` [M, d] (one row per latent) and ``bias`` [d].

    ``decoder(code)`` with a SparseCode (or a (values, indices) pair) of shape [..., k]
    returns x_hat [..., d]. Forward and backward cost O(N * k * d); the weight gradient is
    accumulated in float32, grouped by latent.
    """

    def __init__(self, n_latents: int, d_out: int, *, bias: bool = True, backend: str = "auto",
                 device=None, dtype=None):
        super().__init__()
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(n_latents, d_out, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(d_out, device=device, dtype=dtype)) if bias else None
        with torch.no_grad():
            nn.init.normal_(self.weight)
            self.weight /= self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def extra_repr(self) -> str:
        M, d = self.weight.shape
        return f"n_latents={M}, d_out={d}, bias={self.bias is not None}, backend={self.backend!r}"

    def forward(self, code) -> torch.Tensor:
        """code: SparseCode or (values, indices), each [..., k] -> x_hat [..., d]."""
        return decode(SparseCode(*code), self.weight, self.bias, self.backend)
