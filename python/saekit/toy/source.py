"""Activations and loss gradients of the toy model, as a resumable ActivationSource."""

from __future__ import annotations

import torch

from saekit.toy.model import ToyModel
from saekit.training.source import ActivationBatch


def toy_activations(model: ToyModel, features: torch.Tensor, need_grad: bool = True) -> ActivationBatch:
    """Hidden activations h [N, m] of ``features`` [N, F] and, if ``need_grad``, the gradient of
    the toy loss *summed* over rows with respect to h [N, m].

    With the sum each row's gradient is the gradient of that row's own loss, whatever the
    batch size, so beta means the same at any batch size (a mean would scale it by 1/N).
    """
    with torch.no_grad():
        h = model.encode(features)
    if not need_grad:
        return ActivationBatch(h, None)
    with torch.enable_grad():
        h_leaf = h.detach().requires_grad_(True)
        loss = model.loss_per_row(features, model.decode(h_leaf)).sum()
        (grad,) = torch.autograd.grad(loss, h_leaf)
    return ActivationBatch(h, grad)


class ToySource:
    """Batches of toy-model activations: batch ``i`` is drawn from a generator seeded with
    (seed, i), so the position is one integer and resuming is exact.

    Args:
        model: a trained ToyModel. batch_size: rows N per batch. seed: data seed.
        need_grad: also return the loss gradient (for g-SAEs).
        device: where batches are put.
    """

    def __init__(self, model: ToyModel, batch_size: int, *, seed: int = 0, need_grad: bool = True,
                 device=None):
        self.model = model
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.need_grad = need_grad
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.d_in = model.cfg.n_hidden
        self.position = 0

    def features(self, index: int, n: int | None = None) -> torch.Tensor:
        """The ground-truth features [N, F] of batch ``index``."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return self.model.sample(n or self.batch_size, gen)

    def next_batch(self) -> ActivationBatch:
        x = self.features(self.position)
        self.position += 1
        batch = toy_activations(self.model, x, self.need_grad)
        return ActivationBatch(*(t.to(self.device) if t is not None else None for t in batch))

    def skip_batch(self) -> None:
        """Pass over one batch (another data-parallel rank's) without drawing it."""
        self.position += 1

    def state_dict(self) -> dict:
        return {"kind": "toy", "seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "toy" or state.get("seed") != self.seed:
            raise ValueError(f"data state {state} does not belong to a toy source with seed {self.seed}")
        self.position = int(state["position"])
