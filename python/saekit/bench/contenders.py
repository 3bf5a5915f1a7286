"""What ``saekit bench`` times: one Contender per implementation, each computing the same four
cases from the same weights (SPEC layout).

Cases, for N tokens, d, M latents and k:
- ``encode(x)``: the TopK code of x [N, d] (no gradient).
- ``gradient_encode(x, grad)``: the gradient-TopK code (g-SAE), where supported.
- ``decode(values, indices, grad_out)``: x_hat [N, d] and its backward (dvalues, dW_dec, db_dec).
- ``train_step(x)``: forward, MSE loss (sum over d, mean over N) and backward of a TopK SAE;
  returns the loss and the gradients of W_enc, b_enc, W_dec, b_dec.
A contender that cannot run a case raises ``Unsupported`` with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saekit.nn import SparseCode, TopKSAE
from saekit.ops import dispatch, reference


class Unsupported(Exception):
    """A contender cannot run this case (the message says why); reported, never skipped silently."""


@dataclass
class Weights:
    """One SAE's parameters in SPEC layout: W_enc, W_dec [M, d], b_enc [M], b_dec [d]."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    k: int

    @classmethod
    def random(cls, d, M, k, dtype, device, seed=0) -> "Weights":
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.nn.functional.normalize(torch.randn(M, d, generator=g), dim=1)
        W_enc = W_dec + 0.1 * torch.randn(M, d, generator=g) / d**0.5
        b_enc = 0.1 * torch.randn(M, generator=g)
        b_dec = 0.1 * torch.randn(d, generator=g)
        return cls(*(t.to(device=device, dtype=dtype) for t in (W_enc, b_enc, W_dec, b_dec)), k)


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def _grads(loss, params):
    """Backward of loss; the gradients of params, detached from them so that no call starts
    with the previous call's gradients held (peak memory is measured per call)."""
    loss.backward()
    grads = {name: p.grad for name, p in params.items()}
    for p in params.values():
        p.grad = None
    return grads


class Contender:
    """Base: ``name``, ``unavailable(device, dtype)`` and the four cases (module docstring)."""

    name = "?"

    def unavailable(self, device: torch.device, dtype: torch.dtype) -> str | None:
        return None

    def setup(self, w: Weights) -> None:
        self.w = w

    def encode(self, x):
        raise Unsupported("no TopK encode")

    def to_code(self, encoded) -> SparseCode:
        """What ``encode`` returned, as a SparseCode (for the agreement check, not timed)."""
        return SparseCode(*encoded)

    def gradient_encode(self, x, grad):
        raise Unsupported("no gradient-TopK (g-SAE) encode")

    def decode(self, values, indices, grad_out):
        raise Unsupported("no sparse decode")

    def train_step(self, x):
        raise Unsupported("no SAE training step")


class SaekitContender(Contender):
    """saekit's layers and ops on one backend."""

    def __init__(self, backend: str):
        self.backend = backend
        self.name = f"saekit[{backend}]"

    def unavailable(self, device, dtype):
        return dispatch.supports(self.backend, "topk_encode", device, dtype)

    def setup(self, w):
        super().setup(w)
        d, M = w.W_enc.shape[1], w.W_enc.shape[0]
        self.sae = TopKSAE(d, M, w.k, backend=self.backend, device=w.W_enc.device, dtype=w.W_enc.dtype)
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(self.sae, name).copy_(getattr(w, name))

    @torch.no_grad()
    def encode(self, x):
        return self.sae.encode(x)

    @torch.no_grad()
    def gradient_encode(self, x, grad):
        from saekit.ops import gradient_topk_encode

        w = self.w
        out = gradient_topk_encode(x, grad, w.W_enc, w.b_enc, w.W_dec, w.b_dec, w.k, beta=1.0,
                                   grad_norm="token", backend=self.backend)
        return SparseCode(out.values, out.indices)

    def decode(self, values, indices, grad_out):
        from saekit.ops import sparse_decode

        v, W, b = _leaf(values), _leaf(self.w.W_dec), _leaf(self.w.b_dec)
        x_hat = sparse_decode(v, indices, W, b, backend=self.backend)
        x_hat.backward(grad_out)
        return x_hat, v.grad, W.grad, b.grad

    def train_step(self, x):
        self.sae.zero_grad(set_to_none=True)
        out = self.sae(x)
        loss = (out.x_hat.float() - x.float()).pow(2).sum(-1).mean()
        return loss.detach(), _grads(loss, dict(self.sae.named_parameters()))


class DenseContender(Contender):
    """The dense PyTorch baseline: [N, M] pre-activations, torch.topk, dense decode matmul."""

    name = "dense torch"

    @staticmethod
    def _dense_code(x, W_enc, b_enc, b_dec, k):
        pre = (x - b_dec) @ W_enc.T + b_enc
        top = torch.topk(pre, k, dim=-1)
        return torch.relu(top.values), top.indices

    @staticmethod
    def _dense_decode(values, indices, W_dec, b_dec):
        z = torch.zeros(values.shape[0], W_dec.shape[0], dtype=values.dtype, device=values.device)
        return z.scatter(1, indices, values) @ W_dec + b_dec

    @torch.no_grad()
    def encode(self, x):
        return SparseCode(*self._dense_code(x, self.w.W_enc, self.w.b_enc, self.w.b_dec, self.w.k))

    @torch.no_grad()
    def gradient_encode(self, x, grad):
        w = self.w
        pre = (x - w.b_dec) @ w.W_enc.T + w.b_enc
        g = reference.normalize_grad(grad, "token").to(x.dtype)
        score = pre + torch.relu(pre) * (g @ w.W_dec.T).abs()
        indices = torch.topk(score, w.k, dim=-1).indices
        return SparseCode(torch.relu(pre.gather(1, indices)), indices)

    def decode(self, values, indices, grad_out):
        v, W, b = _leaf(values), _leaf(self.w.W_dec), _leaf(self.w.b_dec)
        x_hat = self._dense_decode(v, indices, W, b)
        x_hat.backward(grad_out)
        return x_hat, v.grad, W.grad, b.grad

    def train_step(self, x):
        params = {n: _leaf(getattr(self.w, n)) for n in ("W_enc", "b_enc", "W_dec", "b_dec")}
        values, indices = self._dense_code(x, params["W_enc"], params["b_enc"], params["b_dec"], self.w.k)
        x_hat = self._dense_decode(values, indices, params["W_dec"], params["b_dec"])
        loss = (x_hat.float() - x.float()).pow(2).sum(-1).mean()
        return loss.detach(), _grads(loss, params)
