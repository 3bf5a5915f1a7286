"""Cases shared by the spawned workers and the single-process references they are checked against.

Every case is built from a seed, so a worker and the test build the same tensors. Grid data
(multiples of 1/4) makes every product exact in float32: selections can be compared bit for bit
and ties are frequent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tests.ops.cases import grid

DIMENSIONS = dict(d=8)


@dataclass(frozen=True)
class Case:
    """One comparison: shapes, data and which SAE."""

    name: str
    N: int
    M: int
    k: int
    k_aux: int = 4
    arch: str = "topk"
    low: int = -8  # grid range in quarters: a narrow range gives many ties
    high: int = 8
    b_enc_shift: float = 0.0  # negative: rows with fewer than k positive pre-activations
    dtype: str = "float32"
    grad_norm: str = "none"
    beta: float = 0.5
    data: str = "grid"
    autocast: bool = False  # forward under torch.autocast(bfloat16), float32 parameters
    seed: int = 0

    def tensors(self) -> dict:
        """x [N, d], grad [N, d], W_enc / W_dec [M, d], b_enc [M], b_dec [d], dead [M], and
        upstream gradients u_xhat [N, d], u_values [N, k], u_aux [N, d], u_aux_values [N, k_aux']."""
        d = DIMENSIONS["d"]
        g = torch.Generator().manual_seed(self.seed)
        if self.data == "grid":
            def draw(*shape):
                return grid(shape, g, self.low, self.high)
        else:
            def draw(*shape):
                return torch.randn(*shape, generator=g, dtype=torch.float64)
        t = dict(x=draw(self.N, d), grad=draw(self.N, d), W_enc=draw(self.M, d), W_dec=draw(self.M, d),
                 b_enc=draw(self.M) + self.b_enc_shift, b_dec=draw(d))
        dt = getattr(torch, self.dtype)
        t = {k: v.to(dt) for k, v in t.items()}
        t["dead"] = torch.arange(self.M) % 3 == 1
        k_aux = min(self.k_aux, int(t["dead"].sum()))
        t["u_xhat"] = grid((self.N, d), g).float()
        t["u_values"] = grid((self.N, self.k), g).float()
        t["u_aux"] = grid((self.N, d), g).float()
        t["u_aux_values"] = grid((self.N, k_aux), g).float()
        return t


CASES = (
    Case("topk-grid", N=12, M=24, k=4),
    Case("topk-ties", N=10, M=30, k=6, low=-2, high=2, seed=1),
    Case("topk-short-rows", N=9, M=22, k=5, b_enc_shift=-3.0, seed=2),
    Case("topk-k-above-slice", N=8, M=10, k=7, k_aux=3, seed=3),
    Case("topk-bf16", N=8, M=20, k=4, dtype="bfloat16", seed=4),
    Case("gsae-grid", N=12, M=24, k=4, arch="gradient_topk", seed=5),
    Case("gsae-ties-short", N=10, M=26, k=5, arch="gradient_topk", low=-2, high=2, b_enc_shift=-2.0, seed=6),
    Case("gsae-token-randn", N=10, M=24, k=4, arch="gradient_topk", grad_norm="token", beta=1.0, data="randn",
         seed=7),
    # Gaussian data under bf16 autocast: near-ties at bf16 resolution, which the cross-rank merge
    # must order as the single process does (its candidate scores in float32).
    Case("topk-autocast-randn", N=64, M=24, k=4, data="randn", autocast=True, seed=8),
    Case("gsae-autocast-randn", N=64, M=24, k=4, arch="gradient_topk", data="randn", autocast=True, seed=9),
)


def full_sae(case: Case):
    """The single-process saekit SAE of a case, with the case's parameters."""
    from saekit.nn import GradientTopKSAE, TopKSAE

    t = case.tensors()
    d, dt = DIMENSIONS["d"], getattr(torch, case.dtype)
    if case.arch == "gradient_topk":
        sae = GradientTopKSAE(d, case.M, case.k, beta=case.beta, grad_norm=case.grad_norm, k_aux=case.k_aux,
                              backend="cpu", dtype=dt)
    else:
        sae = TopKSAE(d, case.M, case.k, k_aux=case.k_aux, backend="cpu", dtype=dt)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(t[name])
    return sae


def run_case(sae, case: Case) -> dict:
    """Forward with the dead mask, backward of a loss touching every output; returns outputs
    and gradients (local ones for a sharded SAE, with its [start, end))."""
    t = case.tensors()
    x = t["x"].clone().requires_grad_(True)
    args = (x, t["grad"]) if case.arch == "gradient_topk" else (x,)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case.autocast):
        out = sae(*args, dead=t["dead"])
        aux_recon = sae.decode_without_bias(out.aux)
    loss = ((out.x_hat.float() * t["u_xhat"]).sum() + (out.code.values.float() * t["u_values"]).sum()
            + (aux_recon.float() * t["u_aux"]).sum() + (out.aux.values.float() * t["u_aux_values"]).sum())
    loss.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case.autocast):
        plain = sae(*args)  # no dead mask: the plain path
    result = {
        "x_hat": out.x_hat.detach(), "values": out.code.values.detach(), "indices": out.code.indices,
        "aux_values": out.aux.values.detach(), "aux_indices": out.aux.indices, "aux_recon": aux_recon.detach(),
        "plain_indices": plain.code.indices, "plain_x_hat": plain.x_hat.detach(), "dx": x.grad,
        "start": getattr(sae, "start", 0), "end": getattr(sae, "end", case.M),
    }
    result.update({f"d{name}": p.grad.clone() for name, p in sae.named_parameters()})
    return result


TRAIN = Case("train", N=16, M=24, k=4, k_aux=4, seed=11)
TRAIN_STEPS = 3


def train_steps(sae, case: Case = TRAIN, steps: int = TRAIN_STEPS, rows=None, data_world: int = 1,
                reduce=None, auxk: bool = True) -> tuple:
    """A few trainer-like Adam steps (a sum-of-squares loss, which splits over data ranks; AuxK
    on a fixed dead mask unless ``auxk`` is False, as its FVU does not split; decoder-norm
    upkeep). ``rows`` selects this data rank's rows, ``reduce(sae)`` averages gradients over
    data ranks. Returns (per step the selected indices and the parameters after the step, the
    optimizer)."""
    t = case.tensors()
    x = t["x"] if rows is None else t["x"][rows]
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    history = []
    for _ in range(steps):
        out = sae(x, dead=t["dead"])
        n_total = t["x"].shape[0]
        recon = (x - out.x_hat).pow(2).sum() / n_total * data_world
        aux = sae.auxk_loss(x, out) if auxk else 0.0
        (recon + aux / 32).backward()
        if reduce is not None:
            reduce(sae)
        sae.remove_parallel_gradient_()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.normalize_decoder_()
        history.append({"indices": out.code.indices, "aux_indices": out.aux.indices,
                        **{name: p.detach().clone() for name, p in sae.named_parameters()}})
    return history, opt
