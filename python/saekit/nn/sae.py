"""TopKSAE and GradientTopKSAE: encoder, sparse selection and sparse decoder in one module."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from saekit.nn.activations import GradientTopK, TopK
from saekit.nn.batch_topk import BatchTopK
from saekit.nn.decoder import decode
from saekit.nn.decoder_norm import normalize_rows_, remove_parallel_gradient_
from saekit.nn.metrics import auxk_loss
from saekit.nn.sparse_code import SAEOutput, SparseCode
from saekit.ops.validation import GRAD_NORMS, check_dead

ARCHITECTURES = ("topk", "batch_topk", "gradient_topk")


@dataclass
class SAEConfig:
    """Everything needed to rebuild an SAE, stored as ``cfg.json`` next to its weights.

    architecture: "topk", "batch_topk" or "gradient_topk". k_aux: latents of the AuxK loss
    (Gao et al. 2024 use 512). beta and grad_norm only matter for "gradient_topk".
    """

    d_in: int
    n_latents: int
    k: int
    architecture: str = "topk"
    k_aux: int = 512
    beta: float = 1.0
    grad_norm: str = "token"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("d_in", "n_latents", "k", "k_aux"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "k_aux" else 1):
                raise ValueError(f"SAEConfig.{name} must be a positive int, got {value!r}")
        if self.k > self.n_latents:
            raise ValueError(f"SAEConfig.k must be at most n_latents = {self.n_latents}, got {self.k}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"SAEConfig.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.grad_norm not in GRAD_NORMS:
            raise ValueError(f"SAEConfig.grad_norm must be one of {GRAD_NORMS}, got {self.grad_norm!r}")
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not math.isfinite(self.beta):
            raise ValueError(f"SAEConfig.beta must be a finite number, got {self.beta!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class SAEShape:
    """What every SAE module reads off its SAEConfig ``cfg``: its sizes and the input check."""

    cfg: SAEConfig

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    @property
    def k(self) -> int:
        return self.cfg.k

    def _check_input(self, x: torch.Tensor, name: str = "x") -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != self.d_in:
            raise ValueError(f"{name} must have shape [..., d_in] with d_in = {self.d_in}, got {list(x.shape)}")


class TopKSAE(SAEShape, nn.Module):
    """A TopK sparse autoencoder (Gao et al. 2024) on [..., d_in] activations.

    Parameters (SPEC layout): W_enc [M, d], b_enc [M], W_dec [M, d] (unit-norm rows at init),
    b_dec [d], with M = n_latents. ``encode`` subtracts b_dec first (the pre-encoder bias).

    - ``encode(x)`` -> SparseCode(values, indices [..., k]); ``encode(x, dead=mask)`` ->
      (code, aux_code) with aux_code the top k_aux among dead latents (k_aux clamped to the
      number of dead latents).
    - ``decode(code)`` -> x_hat [..., d].
    - ``forward(x, dead=None)`` -> SAEOutput(x_hat, code, aux).

    Args:
        d_in, n_latents, k: shapes and sparsity. k_aux: AuxK latents (default 512).
        activation: "topk" (default) or "batch_topk" (BatchTopK in training, its learned
            threshold in eval mode).
        backend: "auto" or a backend name, passed to every op (see saekit.ops.dispatch).
    """

    architecture = "topk"

    def __init__(self, d_in: int, n_latents: int, k: int, *, k_aux: int = 512, activation: str = "topk",
                 backend: str = "auto", device=None, dtype=None, **cfg_extra):
        super().__init__()
        arch = "batch_topk" if activation == "batch_topk" else self.architecture
        if activation not in ("topk", "batch_topk"):
            raise ValueError(f"activation must be 'topk' or 'batch_topk', got {activation!r}")
        self.cfg = SAEConfig(d_in, n_latents, k, architecture=arch, k_aux=k_aux, **cfg_extra)
        self.backend = backend
        self.W_enc = nn.Parameter(torch.empty(n_latents, d_in, device=device, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(n_latents, device=device, dtype=dtype))
        self.W_dec = nn.Parameter(torch.empty(n_latents, d_in, device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, device=device, dtype=dtype))
        self.activation = BatchTopK(k, backend=backend) if arch == "batch_topk" else TopK(k, backend=backend)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Unit-norm random decoder rows, encoder tied to the decoder, zero biases (Gao et al.)."""
        nn.init.normal_(self.W_dec)
        self.normalize_decoder_()
        self.W_enc.copy_(self.W_dec)
        self.b_enc.zero_()
        self.b_dec.zero_()

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, n_latents={self.n_latents}, k={self.k}, backend={self.backend!r}"

    def _select(self, x: torch.Tensor, grad: torch.Tensor | None) -> SparseCode:
        self.activation.backend = self.backend
        return self.activation(x, self.W_enc, self.b_enc, self.b_dec)

    def aux_code(self, x: torch.Tensor, dead: torch.Tensor) -> SparseCode:
        """Top k_aux pre-activations among the dead latents: SparseCode [..., k_aux'] with
        k_aux' = min(k_aux, dead.sum()). Costs an encode over the dead latents only."""
        dead_ids = dead.nonzero().squeeze(1)  # ascending, so ties keep the lower latent
        k_aux = min(self.cfg.k_aux, dead_ids.numel())
        leading = x.shape[:-1]
        if k_aux == 0:
            empty = x.new_zeros(*leading, 0)
            return SparseCode(empty, empty.long())
        topk = TopK(k_aux, backend=self.backend)
        values, local = topk(x, self.W_enc[dead_ids], self.b_enc[dead_ids], self.b_dec)
        return SparseCode(values, dead_ids[local])

    def _encode(self, x, grad, dead):
        """(code, aux or None). Plain TopK takes AuxK from the same fused pass as its selection."""
        self._check_input(x)
        if dead is not None:
            check_dead(dead, 0, x, self.n_latents)
        if dead is not None and self.cfg.architecture == "topk" and grad is None:
            self.activation.backend = self.backend
            k_aux = min(self.cfg.k_aux, int(dead.sum()))
            return self.activation(x, self.W_enc, self.b_enc, self.b_dec, dead=dead, k_aux=k_aux)
        code = self._select(x, grad)
        return code, (None if dead is None else self.aux_code(x, dead))

    def encode(self, x: torch.Tensor, *, dead: torch.Tensor | None = None):
        """x [..., d_in] -> SparseCode [..., k], or (code, aux_code) when ``dead`` [M] is given."""
        code, aux = self._encode(x, None, dead)
        return code if dead is None else (code, aux)

    def decode(self, code) -> torch.Tensor:
        """SparseCode (values, indices [..., k]) -> x_hat [..., d_in]."""
        return decode(SparseCode(*code), self.W_dec, self.b_dec, self.backend)

    def decode_without_bias(self, code) -> torch.Tensor:
        """sum_j values_j * W_dec[indices_j], [..., d_in]: the AuxK reconstruction of a residual."""
        return decode(SparseCode(*code), self.W_dec, None, self.backend)

    def _decode_own(self, code: SparseCode) -> torch.Tensor:
        """decode for a code this SAE's encoder just selected: no index range check (no sync)."""
        return decode(code, self.W_dec, self.b_dec, self.backend, check_indices=False)

    def forward(self, x: torch.Tensor, *, dead: torch.Tensor | None = None) -> SAEOutput:
        """x [..., d_in] -> SAEOutput(x_hat [..., d_in], code [..., k], aux or None)."""
        code, aux = self._encode(x, None, dead)
        return SAEOutput(self._decode_own(code), code, aux)

    def auxk_loss(self, x: torch.Tensor, out: SAEOutput) -> torch.Tensor:
        """AuxK loss (before its 1/32 coefficient) of a forward output that has ``aux``."""
        if out.aux is None:
            raise ValueError("auxk_loss needs a forward pass given the dead mask (forward(x, dead=...))")
        residual = x - out.x_hat
        return auxk_loss(residual, self.decode_without_bias(out.aux))

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit norm, in place."""
        normalize_rows_(self.W_dec)

    def remove_parallel_gradient_(self) -> None:
        """Remove from W_dec.grad its component along each decoder row (call before step())."""
        remove_parallel_gradient_(self.W_dec)

    def save(self, path) -> None:
        """Write ``sae.safetensors`` and ``cfg.json`` into directory ``path`` (saekit.io)."""
        from saekit.io import save_sae

        save_sae(self, path)

    @classmethod
    def load(cls, path, *, device=None, dtype=None, backend: str = "auto") -> "TopKSAE":
        """Load an SAE saved by ``save``. The class comes from cfg.json's architecture; called on
        a subclass (``GradientTopKSAE.load``), a checkpoint of another architecture is a
        ValueError rather than a module of another class."""
        from saekit.io import load_sae

        sae = load_sae(path, device=device, dtype=dtype, backend=backend)
        if not isinstance(sae, cls):
            raise ValueError(f"{path}: holds a {sae.cfg.architecture!r} SAE ({type(sae).__name__}), not a "
                             f"{cls.architecture!r} one; load it with TopKSAE.load or saekit.io.load_sae")
        return sae


class TakesGradient:
    """encode / forward of a g-SAE: the downstream gradient ``grad`` [..., d_in] rides along with
    x into the selection (``_encode``); without it the selection is plain TopK."""

    def encode(self, x: torch.Tensor, grad: torch.Tensor | None = None, *, dead: torch.Tensor | None = None):
        """x, grad [..., d_in] -> SparseCode [..., k] (or (code, aux_code) with ``dead``)."""
        code, aux = self._encode(x, grad, dead)
        return code if dead is None else (code, aux)

    def forward(self, x: torch.Tensor, grad: torch.Tensor | None = None, *,
                dead: torch.Tensor | None = None) -> SAEOutput:
        """x, grad [..., d_in] -> SAEOutput(x_hat, code, aux or None)."""
        code, aux = self._encode(x, grad, dead)
        return SAEOutput(self._decode_own(code), code, aux)


class GradientTopKSAE(TakesGradient, TopKSAE):
    """A gradient-TopK SAE (g-SAE): TopKSAE whose selection weighs each latent by how much it
    moves a downstream loss (SPEC section 2).

    ``encode(x, grad)`` / ``forward(x, grad)`` take grad [..., d_in], the downstream loss's
    gradient with respect to x from the unmodified model. Without ``grad`` (None) the
    selection is plain TopK, e.g. at inference when no loss is available.

    Args (beyond TopKSAE's): beta (default 1.0) and grad_norm ("token" by default: each
    gradient row is divided by its norm, so beta does not depend on the loss reduction).
    """

    architecture = "gradient_topk"

    def __init__(self, d_in: int, n_latents: int, k: int, *, beta: float = 1.0, grad_norm: str = "token",
                 k_aux: int = 512, backend: str = "auto", device=None, dtype=None):
        super().__init__(d_in, n_latents, k, k_aux=k_aux, backend=backend, device=device, dtype=dtype,
                         beta=float(beta), grad_norm=grad_norm)
        self.gradient_topk = GradientTopK(k, beta, grad_norm, backend=backend)

    def _select(self, x, grad):
        if grad is None:
            return super()._select(x, None)
        self._check_input(grad, "grad")
        self.gradient_topk.backend = self.backend
        return self.gradient_topk(x, grad, self.W_enc, self.b_enc, self.W_dec, self.b_dec)
