"""Packed selection keys: one int64 per (score, latent) whose integer order is SPEC's order.

key = (order-preserving int32 of the float32 score) << 32 | (2^31 - 1 - latent)

so a larger key means a larger score, and among equal scores a lower latent index. -0.0 is
folded into +0.0 (they compare equal in SPEC) and every NaN into the largest high word, so NaN
ranks above +inf and NaNs tie by index, as in ``torch.sort(descending=True, stable=True)``.
The sentinel (-2^63) lies below every real key and marks empty buffer slots.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from saekit.triton import INTERPRETED

if INTERPRETED:
    from saekit.triton.interpreter_topk import merge as _interpreter_merge
    from saekit.triton.interpreter_topk import topk as _interpreter_topk
else:  # never called: the INTERPRETED branches below are pruned at compile time
    _interpreter_merge = _interpreter_topk = tl.topk
_INTERPRETED = tl.constexpr(INTERPRETED)

# Low word = LOW_BASE - latent, so latents must be below 2^31 (checked by the launchers).
LOW_BASE = 2**31 - 1
# The most latents the fused encoder takes: its int32 latent loop (m0 + TILE) stays below 2^31.
MAX_LATENTS = LOW_BASE - 4096
SENTINEL = -(2**63)


@triton.jit
def score_keys(score, latent):
    """score: float32 [...], latent: int32 [...] (same shape) -> int64 keys [...]."""
    s = tl.where(score == 0.0, 0.0, score)
    bits = s.to(tl.int32, bitcast=True)
    # Negative floats order backwards as integers: flip their magnitude bits, keep the sign.
    high = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    high = tl.where(score != score, 0x7FFFFFFF, high)  # noqa: PLR0124 (NaN only)
    low = 0x7FFFFFFF - latent
    return (high.to(tl.int64) << 32) | low.to(tl.int64)


@triton.jit
def merge_top(best, keys, K: tl.constexpr, TILE: tl.constexpr):
    """The K largest of best [R, K] (sorted descending) and keys [R, TILE] -> [R, K] sorted.

    TILE >= K, both powers of two. Compiled: bitonic top-k (``tl.topk``) of the tile, then of
    the union. Interpreted: the tile's top K ascending, merged into best (saekit.triton.
    interpreter_topk, fewer and numpy-friendly steps).
    """
    if _INTERPRETED:
        return _interpreter_merge(best, _interpreter_topk(keys, K, True))
    if TILE > K:
        keys = tl.topk(keys, K)
    both = tl.reshape(tl.join(best, keys), [best.shape[0], 2 * K])
    return tl.topk(both, K)


def key_latents(keys: torch.Tensor) -> torch.Tensor:
    """int64 keys [...] -> int64 latent indices [...]."""
    return LOW_BASE - (keys & 0xFFFFFFFF)


def key_scores(keys: torch.Tensor) -> torch.Tensor:
    """int64 keys [...] -> float32 scores [...] (-0.0 reads back as 0.0, NaN as one NaN)."""
    high = (keys >> 32).to(torch.int32)
    bits = torch.where(high < 0, high ^ 0x7FFFFFFF, high)
    return bits.view(torch.float32)
