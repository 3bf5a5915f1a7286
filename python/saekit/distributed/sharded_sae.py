"""Latent-sharded (tensor-parallel over M) TopK and gradient-TopK SAEs.

Each rank of a latent group of R ranks holds the contiguous slice [start, end) of the M
latents: W_enc [Ms, d], b_enc [Ms], W_dec [Ms, d] (Ms = end - start) and a replica of b_dec
[d]. Every rank of the group gets the same input rows and returns the same outputs as the
unsharded TopKSAE / GradientTopKSAE, global latent indices included.

Forward, per rank (N rows, c = min(k, ceil(M / R)) candidates):

1. the ordinary saekit op on the local slice -> its top c (saekit.ops, any backend);
2. exact scores of those candidates (saekit.distributed.selection), one all-gather of
   N * c * (value + score + index) per rank, the same global top k picked on every rank;
3. decode: each rank decodes the selected latents it owns (others weigh 0), one all-reduce
   (sum) of the N x d partial reconstructions in float32, then + b_dec.

Backward moves only what it must: the gathered values hand each rank the gradient of its own
candidates (no communication), the encoder and decoder backward are the local sparse ops on
the owned latents, the reconstruction's all-reduce passes gradients through, and only the
b_dec gradient's encoder part ([d]) and, when x requires grad, dx ([N, d]) are summed.

Contract: the loss must be computed identically on every rank of the latent group (it is, when
it depends only on the returned x_hat, code and aux, which are replicated). Data parallelism is
orthogonal: wrap the module in DistributedDataParallel(process_group=ctx.data_group) or call
saekit.distributed.metrics.all_reduce_gradients(module, ctx.data_group).
"""

from __future__ import annotations

import torch
from torch import nn

from saekit.distributed.comm import (
    copy_to_group,
    group_rank,
    group_size,
    reduce_from_group,
)
from saekit.distributed.mesh import shard_bounds
from saekit.distributed.selection import (
    candidate_pre,
    gradient_scores,
    merge_top_k,
    pad_candidates,
)
from saekit.nn._casting import cast, compute_dtype, flatten_rows, unflatten_rows
from saekit.nn.decoder_norm import normalize_rows_, remove_parallel_gradient_
from saekit.nn.metrics import auxk_loss
from saekit.nn.sae import SAEConfig, SAEShape, TakesGradient
from saekit.nn.sparse_code import SAEOutput, SparseCode
from saekit.ops import reference
from saekit.ops.gradient_topk_encode import gradient_topk_encode
from saekit.ops.sparse_decode import decode_rows
from saekit.ops.topk_encode import topk_encode
from saekit.ops.validation import checked_indices

SHARDED_PARAMETERS = ("W_enc", "b_enc", "W_dec")  # row-sharded; b_dec is replicated


class ShardedTopKSAE(SAEShape, nn.Module):
    """A TopK SAE whose M latents are split over the ranks of ``group``.

    Same calls and outputs as saekit.nn.TopKSAE: ``encode(x)``, ``encode(x, dead=mask)``,
    ``decode(code)``, ``forward(x, dead=None)`` -> SAEOutput(x_hat [..., d], code [..., k],
    aux [..., k_aux'] or None), ``auxk_loss``, ``normalize_decoder_``,
    ``remove_parallel_gradient_``. ``dead`` is the global [M] mask, identical on every rank
    (a DeadLatentTracker over the data group gives that). Indices are global.

    Args:
        d_in, n_latents, k, k_aux: as TopKSAE (n_latents is the global M, at least R).
        group: the latent group (a ProcessGroup; None: the world if torch.distributed is
            running, else one process holding every latent).
        backend: passed to every local op.
        init_seed: seed of the local initialisation (unit-norm decoder rows, tied encoder,
            zero biases); each rank draws its own rows. Use ``from_sae`` for the exact
            parameters of an existing SAE.
    """

    architecture = "topk"

    def __init__(self, d_in: int, n_latents: int, k: int, *, group=None, k_aux: int = 512, backend: str = "auto",
                 device=None, dtype=None, init_seed: int = 0, **cfg_extra):
        super().__init__()
        self.cfg = SAEConfig(d_in, n_latents, k, architecture=self.architecture, k_aux=k_aux, **cfg_extra)
        if n_latents + k >= 2**31:
            raise ValueError(f"n_latents must be below 2**31 - k (indices travel as int32), got {n_latents}")
        self.group = group
        self.shard_world, self.shard_rank = group_size(group), group_rank(group)
        self.start, self.end = shard_bounds(n_latents, self.shard_world, self.shard_rank)
        self.backend = backend
        Ms = self.end - self.start
        self.W_enc = nn.Parameter(torch.empty(Ms, d_in, device=device, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(Ms, device=device, dtype=dtype))
        self.W_dec = nn.Parameter(torch.empty(Ms, d_in, device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, device=device, dtype=dtype))
        self.reset_parameters(init_seed)

    # ----------------------------------------------------------------- construction

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Unit-norm random decoder rows (seeded by seed and this shard's start), tied encoder,
        zero biases, as TopKSAE initialises (not the same random rows)."""
        gen = torch.Generator(device="cpu").manual_seed(int(seed) * 1_000_003 + self.start)
        rows = torch.randn(self.W_dec.shape, generator=gen, dtype=torch.float32)
        self.W_dec.copy_(rows)
        self.normalize_decoder_()
        self.W_enc.copy_(self.W_dec)
        self.b_enc.zero_()
        self.b_dec.zero_()

    @classmethod
    def from_sae(cls, sae, *, group=None, backend: str | None = None) -> ShardedTopKSAE:
        """This rank's slice of an unsharded TopKSAE / GradientTopKSAE (same dtype, device and
        cfg.extra)."""
        cfg = sae.cfg
        if cfg.architecture != cls.architecture:
            raise ValueError(f"{cls.__name__} shards architecture {cls.architecture!r}, got {cfg.architecture!r}")
        out = cls(**_init_args(cfg), group=group, backend=backend or sae.backend, device=sae.W_enc.device,
                  dtype=sae.W_enc.dtype)
        out.load_full_state_dict(sae.state_dict())
        out.cfg.extra = dict(cfg.extra)
        return out

    @torch.no_grad()
    def load_full_state_dict(self, state: dict) -> None:
        """Copy this rank's rows from an unsharded state dict (W_enc, b_enc, W_dec [M, ...], b_dec)."""
        for name in (*SHARDED_PARAMETERS, "b_dec"):
            if name not in state:
                raise ValueError(f"state dict has no {name!r}")
            full = state[name]
            expected = (self.n_latents, self.d_in) if name in ("W_enc", "W_dec") else (
                (self.n_latents,) if name == "b_enc" else (self.d_in,))
            if tuple(full.shape) != expected:
                raise ValueError(f"state dict {name!r} has shape {list(full.shape)}, expected {list(expected)}")
            src = full[self.start:self.end] if name in SHARDED_PARAMETERS else full
            getattr(self, name).copy_(src)

    def extra_repr(self) -> str:
        return (f"d_in={self.d_in}, n_latents={self.n_latents}, k={self.k}, latents=[{self.start}, {self.end}) "
                f"on shard {self.shard_rank}/{self.shard_world}, backend={self.backend!r}")


    def _check_dead(self, dead) -> torch.Tensor:
        if not isinstance(dead, torch.Tensor) or dead.dtype != torch.bool or tuple(dead.shape) != (self.n_latents,):
            got = f"{dead.dtype} {list(dead.shape)}" if isinstance(dead, torch.Tensor) else type(dead).__name__
            raise ValueError(f"dead must be a bool tensor of shape [n_latents] = [{self.n_latents}] (global), got {got}")
        return dead

    def _width(self, k: int) -> int:
        """Candidates per rank sent in the all-gather: min(k, the largest slice)."""
        return min(k, shard_bounds(self.n_latents, self.shard_world, 0)[1])

    # ----------------------------------------------------------------- encode

    def _prepare(self, x):
        """(x [N, d], W_enc, b_enc, b_dec) cast to the compute dtype, with b_dec (and x when it
        requires grad) wrapped so that their gradients add up over the latent group."""
        dtype = compute_dtype(x)
        x_in = copy_to_group(x, self.group)
        b_dec = copy_to_group(self.b_dec, self.group)
        return cast(dtype, flatten_rows(x_in), self.W_enc, self.b_enc, b_dec)

    def _merge(self, values, local, scores, k: int, width: int) -> SparseCode:
        """Global top k of this rank's candidates (local indices) and every other rank's."""
        v, s, i = pad_candidates(values, scores, local + self.start, width, self.n_latents)
        if v.shape[0] == 0:
            return SparseCode(v[:, :k], i[:, :k])
        return SparseCode(*merge_top_k(v, s, i, k, self.group))

    def _aux_plan(self, dead) -> tuple[int, int]:
        """(k_aux', width) for the global dead mask [M]: k_aux' = min(k_aux, dead.sum()) latents
        are kept; each rank sends width = max over ranks of min(k_aux', its dead latents)."""
        bounds = torch.tensor([0] + [shard_bounds(self.n_latents, self.shard_world, r)[1]
                                     for r in range(self.shard_world)], device=dead.device)
        cum = torch.cat([dead.new_zeros(1, dtype=torch.int64), dead.cumsum(0)])[bounds]
        per_rank = cum[1:] - cum[:-1]
        k_aux_total = min(self.cfg.k_aux, int(cum[-1]))
        return k_aux_total, int(per_rank.clamp(max=k_aux_total).max())

    def _topk_code(self, x2, W, be, bd, dead=None):
        """Fused local TopK (plus AuxK among the dead latents of the global mask) and the merge."""
        kl = min(self.k, self.end - self.start)
        if dead is None:
            out = topk_encode(x2, W, be, bd, kl, backend=self.backend)
        else:
            k_aux_total, width = self._aux_plan(dead)
            dead_local = dead[self.start:self.end]
            k_aux_local = min(k_aux_total, int(dead_local.sum()))
            out = topk_encode(x2, W, be, bd, kl, dead=dead_local, k_aux=k_aux_local, backend=self.backend)
        code = self._merge(out.values, out.indices, candidate_pre(out.values, out.indices, x2, W, be, bd),
                           self.k, self._width(self.k))
        if dead is None:
            return code, None
        return code, self._merge_aux(out.aux_values, out.aux_indices, x2, W, be, bd, k_aux_total, width)

    def _merge_aux(self, values, local, x2, W, be, bd, k_aux_total: int, width: int) -> SparseCode:
        if width == 0:
            empty = values.new_zeros(x2.shape[0], 0)
            return SparseCode(empty, empty.long())
        return self._merge(values, local, candidate_pre(values, local, x2, W, be, bd), k_aux_total, width)

    def _aux_code(self, x2, W, be, bd, dead) -> SparseCode:
        """AuxK selection on its own (an encode over this rank's dead latents only)."""
        k_aux_total, width = self._aux_plan(dead)
        ids = dead[self.start:self.end].nonzero().squeeze(1)  # ascending: ties keep the lower latent
        k_local = min(k_aux_total, ids.numel())
        if k_local == 0:
            values = x2.new_zeros(x2.shape[0], 0)
            local = values.long()
        else:
            out = topk_encode(x2, W[ids], be[ids], bd, k_local, backend=self.backend)
            values, local = out.values, ids[out.indices]
        return self._merge_aux(values, local, x2, W, be, bd, k_aux_total, width)

    def _select(self, x2, W, be, bd, grad, dead):
        """(code, aux or None) for rows x2 [N, d] in the compute dtype."""
        return self._topk_code(x2, W, be, bd, dead)

    def _encode(self, x, grad, dead):
        self._check_input(x)
        if dead is not None:
            dead = self._check_dead(dead)
        leading = x.shape[:-1]
        x2, W, be, bd = self._prepare(x)
        code, aux = self._select(x2, W, be, bd, grad, dead)
        code = SparseCode(unflatten_rows(code.values, leading), unflatten_rows(code.indices, leading))
        if aux is not None:
            aux = SparseCode(unflatten_rows(aux.values, leading), unflatten_rows(aux.indices, leading))
        return code, aux

    def encode(self, x: torch.Tensor, *, dead: torch.Tensor | None = None):
        """x [..., d_in] -> SparseCode [..., k] (global indices), or (code, aux_code) with ``dead`` [M]."""
        code, aux = self._encode(x, None, dead)
        return code if dead is None else (code, aux)

    # ----------------------------------------------------------------- decode

    def _decode(self, code, bias: bool, check_indices: bool = True) -> torch.Tensor:
        values, indices = SparseCode(*code)
        leading = values.shape[:-1]
        v2, i2 = flatten_rows(values, "values"), flatten_rows(indices, "indices")
        if check_indices:
            i2 = checked_indices(i2, self.n_latents)
        dtype = compute_dtype(values)
        own = (i2 >= self.start) & (i2 < self.end)
        Ms = self.end - self.start
        # Latents owned elsewhere weigh 0; their rows are spread over the slice (no hot row).
        local = torch.where(own, i2 - self.start, i2.remainder(Ms))
        v2, W_dec = cast(dtype, torch.where(own, v2, torch.zeros((), dtype=v2.dtype, device=v2.device)), self.W_dec)
        zeros = W_dec.new_zeros(self.d_in)
        # local lies in [0, Ms) by construction: no second range check.
        partial = decode_rows(v2, local, W_dec, zeros, backend=self.backend, check_indices=False)
        acc = reference.acc_dtype(partial)
        x_hat = reduce_from_group(partial.to(acc), self.group)
        if bias:
            x_hat = x_hat + self.b_dec.to(acc)
        return unflatten_rows(x_hat.to(dtype), leading)

    def decode(self, code) -> torch.Tensor:
        """SparseCode (values, global indices [..., k]) -> x_hat [..., d_in], identical on every rank."""
        return self._decode(code, True)

    def _decode_own(self, code) -> torch.Tensor:
        """decode for a code this SAE's encoder just selected: no index range check (no sync)."""
        return self._decode(code, True, check_indices=False)

    def decode_without_bias(self, code) -> torch.Tensor:
        """sum_j values_j * W_dec[indices_j] over all ranks' latents, [..., d_in] (AuxK)."""
        return self._decode(code, False)

    def forward(self, x: torch.Tensor, *, dead: torch.Tensor | None = None) -> SAEOutput:
        """x [..., d_in] -> SAEOutput(x_hat [..., d_in], code [..., k], aux or None)."""
        code, aux = self._encode(x, None, dead)
        return SAEOutput(self._decode_own(code), code, aux)

    def auxk_loss(self, x: torch.Tensor, out: SAEOutput) -> torch.Tensor:
        """AuxK loss (before its coefficient) of a forward output that has ``aux``."""
        if out.aux is None:
            raise ValueError("auxk_loss needs a forward pass given the dead mask (forward(x, dead=...))")
        return auxk_loss(x - out.x_hat, self.decode_without_bias(out.aux))

    # ----------------------------------------------------------------- training helpers

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale this rank's decoder rows to unit norm, in place (rows are independent)."""
        normalize_rows_(self.W_dec)

    def remove_parallel_gradient_(self) -> None:
        """Remove from W_dec.grad its component along each local decoder row."""
        remove_parallel_gradient_(self.W_dec)

    def save(self, path, **kwargs):
        """Write this rank's shard (and, on the first rank, the manifest): see checkpoint.save_sharded."""
        from saekit.distributed.checkpoint import save_sharded

        return save_sharded(self, path, **kwargs)


class ShardedGradientTopKSAE(TakesGradient, ShardedTopKSAE):
    """The latent-sharded g-SAE: ShardedTopKSAE with gradient-TopK selection (SPEC section 2).

    ``encode(x, grad)`` / ``forward(x, grad, dead=None)`` as saekit.nn.GradientTopKSAE; without
    grad the selection is TopK. beta and grad_norm as there (defaults 1.0 and "token").
    """

    architecture = "gradient_topk"

    def __init__(self, d_in: int, n_latents: int, k: int, *, beta: float = 1.0, grad_norm: str = "token",
                 group=None, k_aux: int = 512, backend: str = "auto", device=None, dtype=None, init_seed: int = 0):
        super().__init__(d_in, n_latents, k, group=group, k_aux=k_aux, backend=backend, device=device, dtype=dtype,
                         init_seed=init_seed, beta=float(beta), grad_norm=grad_norm)

    def _select(self, x2, W, be, bd, grad, dead):
        if grad is None:
            return super()._select(x2, W, be, bd, None, dead)
        self._check_input(grad, "grad")
        if grad.shape[:-1].numel() != x2.shape[0]:
            raise ValueError(f"grad must have the shape of x, got {list(grad.shape)}")
        # As GradientTopK: normalised in float32 before the cast, then passed with grad_norm="none".
        g = reference.normalize_grad(flatten_rows(grad, "grad"), self.cfg.grad_norm)
        g2, W_dec = cast(x2.dtype, g, self.W_dec.detach())
        kl = min(self.k, self.end - self.start)
        out = gradient_topk_encode(x2, g2, W, be, W_dec, bd, kl, beta=self.cfg.beta, grad_norm="none",
                                   backend=self.backend)
        pre = candidate_pre(out.values, out.indices, x2, W, be, bd)
        scores = gradient_scores(pre, out.indices, g2, W_dec, self.cfg.beta)
        code = self._merge(out.values, out.indices, scores, self.k, self._width(self.k))
        return code, (None if dead is None else self._aux_code(x2, W, be, bd, dead))


SHARDED_CLASSES = {"topk": ShardedTopKSAE, "gradient_topk": ShardedGradientTopKSAE}


def _init_args(cfg: SAEConfig) -> dict:
    args = dict(d_in=cfg.d_in, n_latents=cfg.n_latents, k=cfg.k, k_aux=cfg.k_aux)
    if cfg.architecture == "gradient_topk":
        args.update(beta=cfg.beta, grad_norm=cfg.grad_norm)
    return args


def build_sharded(cfg: SAEConfig, *, group=None, backend: str = "auto", device=None, dtype=None,
                  init_seed: int = 0) -> ShardedTopKSAE:
    """The sharded SAE of ``cfg``'s architecture for this rank ("batch_topk" is not supported:
    its batch-wide threshold would need a different merge)."""
    if cfg.architecture not in SHARDED_CLASSES:
        raise ValueError(f"latent sharding supports architectures {tuple(SHARDED_CLASSES)}, got {cfg.architecture!r}")
    return SHARDED_CLASSES[cfg.architecture](**_init_args(cfg), group=group, backend=backend, device=device,
                                             dtype=dtype, init_seed=init_seed)
