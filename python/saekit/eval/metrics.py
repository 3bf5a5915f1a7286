"""Streaming SAE evaluation metrics: FVU, L0, dead and dense latent fractions, and the
downstream-loss summary shared by the toy model and language models."""

from __future__ import annotations

import torch


class ReconstructionMetrics:
    """Accumulates reconstruction and sparsity statistics over batches.

    ``update(x, x_hat, code)`` with x, x_hat [..., d] and code a SparseCode [..., k];
    ``compute()`` -> dict with
      fvu: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over every row seen (mean over all rows),
      l0: mean number of nonzero latents per row,
      dead_frac: fraction of latents that never fired,
      dense_frac: fraction of latents firing on more than ``dense_threshold`` of the rows.
    Sums are kept in float64, so the result does not depend on how the rows were batched.
    """

    def __init__(self, n_latents: int, *, dense_threshold: float = 0.1):
        self.n_latents = n_latents
        self.dense_threshold = dense_threshold
        self.rows = 0
        self.sse = 0.0
        self.l0_sum = 0.0
        self.sum_x = None
        self.sum_x2 = 0.0
        self.fires = torch.zeros(n_latents, dtype=torch.int64)

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, code) -> None:
        x2 = x.reshape(-1, x.shape[-1]).double()
        xh = x_hat.reshape(-1, x.shape[-1]).double()
        values = code.values.reshape(x2.shape[0], -1)
        indices = code.indices.reshape(x2.shape[0], -1)
        self.rows += x2.shape[0]
        self.sse += (x2 - xh).pow(2).sum().item()
        self.sum_x = x2.sum(0) if self.sum_x is None else self.sum_x + x2.sum(0)
        self.sum_x2 += x2.pow(2).sum().item()
        self.l0_sum += (values != 0).sum().item()
        fired = torch.zeros(x2.shape[0], self.n_latents, dtype=torch.bool, device=values.device)
        fired.scatter_(1, indices, values != 0)
        self.fires += fired.sum(0).cpu()

    def compute(self) -> dict:
        if self.rows == 0:
            raise ValueError("no rows were evaluated (empty dataset?)")
        variance = self.sum_x2 - self.sum_x.pow(2).sum().item() / self.rows
        freq = self.fires.double() / self.rows
        return {
            "fvu": self.sse / max(variance, 1e-30),
            "l0": self.l0_sum / self.rows,
            "dead_frac": (self.fires == 0).double().mean().item(),
            "dense_frac": (freq > self.dense_threshold).double().mean().item(),
        }


def downstream_summary(loss_clean: float, loss_spliced: float, loss_zero: float) -> dict:
    """Downstream loss with the SAE spliced in versus the clean and zero-ablated model.

    loss_increase = spliced - clean; loss_recovered = (zero - spliced) / (zero - clean), the
    fraction of the loss that the zero-ablation loses and the SAE gives back (1 = perfect).
    """
    gap = loss_zero - loss_clean
    return {
        "loss_clean": loss_clean,
        "loss_spliced": loss_spliced,
        "loss_zero": loss_zero,
        "loss_increase": loss_spliced - loss_clean,
        "loss_recovered": (loss_zero - loss_spliced) / gap if gap != 0 else float("nan"),
    }


@torch.no_grad()
def mean_max_cosine(truth: torch.Tensor, W_dec: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Mean over ground-truth directions truth [F, d] of the best cosine similarity with any
    decoder row W_dec [M, d]; returns (mean, per-direction best [F])."""
    t = torch.nn.functional.normalize(truth.float(), dim=1)
    w = torch.nn.functional.normalize(W_dec.detach().float().cpu(), dim=1)
    best = (t.cpu() @ w.T).max(1).values
    return best.mean().item(), best
