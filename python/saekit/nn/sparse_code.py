"""The sparse code every saekit layer returns, and the SAE forward's output."""

from __future__ import annotations

from typing import NamedTuple

import torch


class SparseCode(NamedTuple):
    """A sparse code: ``values`` [..., k] and ``indices`` [..., k] (int64 latent ids).

    Repeated or zero entries are allowed (BatchTopK pads rows with zeros); decoding adds up
    ``values[..., j] * W_dec[indices[..., j]]``.
    """

    values: torch.Tensor
    indices: torch.Tensor

    def dense(self, n_latents: int) -> torch.Tensor:
        """The code as a dense [..., n_latents] tensor (zeros where no latent was selected).

        Materialises ``n_latents`` entries per row: meant for inspection and small shapes.
        Differentiable with respect to ``values``.
        """
        if self.indices.numel():
            lo, hi = int(self.indices.min()), int(self.indices.max())
            if lo < 0 or hi >= n_latents:
                raise ValueError(f"the code's indices lie in [{lo}, {hi}]: n_latents = {n_latents} is too small")
        out = self.values.new_zeros(*self.values.shape[:-1], n_latents)
        return out.scatter_add(-1, self.indices, self.values)

    @property
    def l0(self) -> torch.Tensor:
        """[...] number of nonzero values per row (float32)."""
        return (self.values != 0).sum(-1, dtype=torch.float32)


class SAEOutput(NamedTuple):
    """Result of an SAE forward pass.

    x_hat: [..., d] reconstruction. code: the SparseCode of the k selected latents.
    aux: the AuxK SparseCode among dead latents [..., k_aux], or None when no dead mask was given.
    """

    x_hat: torch.Tensor
    code: SparseCode
    aux: SparseCode | None = None
