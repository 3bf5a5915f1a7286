"""Dead-latent tracking by tokens since each latent last fired."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class DeadLatentTracker(nn.Module):
    """Counts, per latent, the tokens seen since it last fired (a nonzero value).

    A latent is dead once that count reaches ``threshold_tokens`` (Gao et al. 2024 use 10M
    tokens). The counter is a buffer, so it is saved with the module's state dict.

    Args:
        n_latents: M.
        threshold_tokens: tokens without firing after which a latent counts as dead.
        process_group: with torch.distributed initialised, firing and token counts are
            reduced over this group (default: the world), so every rank agrees on ``dead``.
    """

    def __init__(self, n_latents: int, threshold_tokens: int = 10_000_000, *, process_group=None, device=None):
        super().__init__()
        self.threshold_tokens = int(threshold_tokens)
        self.process_group = process_group
        self.register_buffer("tokens_since_fired", torch.zeros(n_latents, dtype=torch.int64, device=device))

    @torch.no_grad()
    def update(self, indices: torch.Tensor, values: torch.Tensor) -> None:
        """Record one batch: indices and values [..., k] of the selected latents."""
        fired = torch.zeros_like(self.tokens_since_fired, dtype=torch.bool)
        idx = indices.reshape(-1)[values.reshape(-1) != 0]
        fired[idx] = True
        n_tokens = torch.tensor(values.reshape(-1, values.shape[-1]).shape[0] if values.dim() else 0,
                                device=fired.device)
        if dist.is_available() and dist.is_initialized():
            fired_count = fired.to(torch.int32)
            dist.all_reduce(fired_count, group=self.process_group)
            fired = fired_count > 0
            dist.all_reduce(n_tokens, group=self.process_group)
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired] = 0

    @property
    def dead(self) -> torch.Tensor:
        """[M] bool: latents that have not fired for ``threshold_tokens`` tokens."""
        return self.tokens_since_fired >= self.threshold_tokens

    def dead_fraction(self) -> float:
        return self.dead.float().mean().item()
