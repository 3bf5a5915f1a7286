"""Shared pieces of the format tests: random SAE weights with nonzero biases, dense codes and
the comparison every test makes."""

from __future__ import annotations

import torch

# float32 throughout. Conversions run in float64 and the peers and saekit sum in different
# orders: differences stay within a few float32 ulps of O(1) values, far below 1e-5.
RTOL = ATOL = 1e-5


def random_weights(d: int, M: int, *, seed: int = 0, unit_norm: bool = True) -> dict:
    """W_enc [M, d], b_enc [M], W_dec [M, d], b_dec [d] in float32, all biases nonzero."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(M, d, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True) if unit_norm else W_dec * (0.5 + torch.rand(M, 1, generator=g))
    return {"W_enc": torch.randn(M, d, generator=g) / d**0.5, "b_enc": 0.3 * torch.randn(M, generator=g),
            "W_dec": W_dec, "b_dec": 0.5 * torch.randn(d, generator=g)}


def inputs(d: int, n: int = 32, *, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def set_weights(sae, w: dict) -> None:
    """Copy ``w`` into a saekit SAE."""
    with torch.no_grad():
        for name, t in w.items():
            sae.get_parameter(name).copy_(t)


def dense(values: torch.Tensor, indices: torch.Tensor, M: int) -> torch.Tensor:
    """[..., M] dense code of a sparse (values, indices) pair."""
    return values.new_zeros(*values.shape[:-1], M).scatter_add(-1, indices, values)


def assert_same_code(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Dense codes [..., M]: the same latents are active (value > 0), with the same values."""
    assert torch.equal(ours > 0, theirs > 0), "different active latents"
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours, theirs, rtol=RTOL, atol=ATOL)


def saekit_dense(sae, x: torch.Tensor) -> torch.Tensor:
    code = sae.encode(x)
    return dense(code.values, code.indices, sae.n_latents)
