"""TopK and gradient-TopK activation layers: the fused sparse encoders of SPEC sections 1-2."""

from __future__ import annotations

import math

import torch
from torch import nn

from saekit.nn._casting import cast, compute_dtype, flatten_rows, unflatten_rows
from saekit.nn.sparse_code import SparseCode
from saekit.ops import reference
from saekit.ops.gradient_topk_encode import gradient_topk_encode
from saekit.ops.topk_encode import topk_encode
from saekit.ops.validation import GRAD_NORMS, check_k


def _code(values, indices, leading) -> SparseCode:
    return SparseCode(unflatten_rows(values, leading), unflatten_rows(indices, leading))


class TopK(nn.Module):
    """Keep the k largest pre-activations of each row, ReLU'd (Gao et al. 2024).

    Two ways to call it:

    - ``topk(x, W_enc, b_enc, b_dec)``: the fused encoder. x [..., d], W_enc [M, d], b_enc [M],
      b_dec [d] -> SparseCode(values [..., k], indices [..., k]). The [N, M] pre-activations
      are never held in memory (saekit.ops.topk_encode, backend chosen per call).
      With ``dead`` ([M] bool) and ``k_aux`` it returns ``(code, aux_code)``, aux_code being
      the top ``k_aux`` among dead latents ([..., k_aux]), for the AuxK loss.
    - ``topk(pre)``: a drop-in activation for code that already computed pre [..., M]
      densely; same selection rules (descending, ties by lower index), dense cost.

    Under ``torch.autocast`` a float32 input and weights run in the autocast dtype, as a matmul
    would; gradients reach float32 weights through the casts.
    """

    def __init__(self, k: int, *, backend: str = "auto"):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        self.k = k
        self.backend = backend

    def extra_repr(self) -> str:
        return f"k={self.k}, backend={self.backend!r}"

    def forward(self, x, W_enc=None, b_enc=None, b_dec=None, *, dead=None, k_aux=None):
        """x [..., d] with W_enc [M, d], b_enc [M], b_dec [d] -> SparseCode [..., k] (and the
        AuxK code [..., k_aux] with ``dead`` [M] bool); or pre [..., M] alone -> SparseCode."""
        leading = x.shape[:-1]
        if W_enc is None:
            return self._from_pre_activations(x, leading)
        if b_enc is None:
            b_enc = W_enc.new_zeros(W_enc.shape[0])
        if b_dec is None:
            b_dec = W_enc.new_zeros(W_enc.shape[1])
        dtype = compute_dtype(x)
        x2, W_enc, b_enc, b_dec = cast(dtype, flatten_rows(x), W_enc, b_enc, b_dec)
        out = topk_encode(x2, W_enc, b_enc, b_dec, self.k, dead=dead, k_aux=k_aux, backend=self.backend)
        code = _code(out.values, out.indices, leading)
        if dead is None:
            return code
        return code, _code(out.aux_values, out.aux_indices, leading)

    def _from_pre_activations(self, pre, leading) -> SparseCode:
        pre2 = flatten_rows(pre, "pre")
        check_k(self.k, pre2.shape[1])
        indices = reference.select(pre2.detach(), self.k)
        values = torch.relu(pre2.gather(1, indices))
        return _code(values, indices, leading)


class GradientTopK(nn.Module):
    """Gradient-TopK selection of g-SAEs (SPEC section 2): keep the k latents with the largest
    ``relu(pre) * (1 + beta * |g @ W_dec.T|)``; the values are the plain activations.

    ``gtopk(x, grad, W_enc, b_enc, W_dec, b_dec)`` -> SparseCode(values [..., k], indices
    [..., k]), with x and grad [..., d], W_enc and W_dec [M, d], b_enc [M], b_dec [d]. ``grad``
    is the downstream loss's gradient with respect to x, treated as a constant. When ``grad``
    is None the layer selects exactly as TopK does (the documented fallback for inference on
    activations whose gradient is unknown).

    Args:
        k: latents kept per row.
        beta: weight of the gradient term (0 gives TopK's selection). Default 1.0.
        grad_norm: "token" (default) divides each gradient row by its L2 norm, so ``beta``
            means the same whatever the loss reduction or batch size; "none" uses grad as given.
    """

    def __init__(self, k: int, beta: float = 1.0, grad_norm: str = "token", *, backend: str = "auto"):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if grad_norm not in GRAD_NORMS:
            raise ValueError(f"grad_norm must be one of {GRAD_NORMS}, got {grad_norm!r}")
        self.k = k
        self.beta = float(beta)
        if not math.isfinite(self.beta):
            raise ValueError(f"beta must be finite, got {beta!r}")
        self.grad_norm = grad_norm
        self.backend = backend
        self._topk = TopK(k, backend=backend)

    def extra_repr(self) -> str:
        return f"k={self.k}, beta={self.beta}, grad_norm={self.grad_norm!r}, backend={self.backend!r}"

    def forward(self, x, grad, W_enc, b_enc, W_dec, b_dec) -> SparseCode:
        """x, grad [..., d], W_enc [M, d], b_enc [M], W_dec [M, d], b_dec [d] -> SparseCode
        [..., k] selected by the g-SAE score; ``grad=None`` selects as TopK does."""
        if grad is None:
            self._topk.backend = self.backend
            return self._topk(x, W_enc, b_enc, b_dec)
        if grad.shape != x.shape:
            raise ValueError(f"grad must have the shape of x {list(x.shape)}, got {list(grad.shape)}")
        leading = x.shape[:-1]
        dtype = compute_dtype(x)
        # Normalised in float32 before any cast, so small gradients do not underflow in fp16.
        g = reference.normalize_grad(flatten_rows(grad, "grad"), self.grad_norm)
        x2, g2, W_enc, b_enc, W_dec, b_dec = cast(dtype, flatten_rows(x), g, W_enc, b_enc, W_dec.detach(), b_dec)
        out = gradient_topk_encode(
            x2, g2, W_enc, b_enc, W_dec, b_dec, self.k, beta=self.beta, grad_norm="none", backend=self.backend
        )
        return _code(out.values, out.indices, leading)
