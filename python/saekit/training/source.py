"""What a trainer consumes: batches of activations (and, for g-SAEs, their loss gradients).

Any object with this interface can feed ``saekit.training.Trainer``:

- ``d_in``: the activation width d.
- ``next_batch() -> ActivationBatch``: the next batch, x [N, d] and grad [N, d] or None.
- ``state_dict() -> dict`` / ``load_state_dict(dict)``: the stream position as plain JSON
  values, so that a resumed run reads exactly the batches an uninterrupted run would.
- optionally ``skip_batch()``: advance past one batch without computing it (data-parallel
  ranks pass over the other ranks' batches with it; see saekit.training.parallel).

``saekit.training.activations.HookedActivationSource`` (any torch module, Hugging Face causal
LMs first) and ``saekit.toy.source.ToySource`` (the toy model of superposition) implement it.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch


class ActivationBatch(NamedTuple):
    """x: [N, d] activations. grad: [N, d] gradient of the downstream loss with respect to x
    (summed over tokens, so each row is its own token's loss gradient), or None."""

    x: torch.Tensor
    grad: torch.Tensor | None = None


@runtime_checkable
class ActivationSource(Protocol):
    """What the trainer reads from: batches of activations [N, d_in] (with their per-token
    gradients when ``need_grad``), and a position that ``state_dict`` / ``load_state_dict``
    save and restore exactly, so that a resumed run sees the batches it would have seen."""

    d_in: int
    need_grad: bool

    def next_batch(self) -> ActivationBatch:
        """The next batch: x [N, d_in] and grad [N, d_in] or None."""
        ...

    def state_dict(self) -> dict:
        """The position in the stream, JSON-serialisable."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position that ``state_dict`` gave."""
        ...
