"""Global top-k from per-rank candidates: exact scores for the candidates, then one merge.

A rank holding latents [start, end) runs the ordinary saekit op on its slice and keeps its
local top c = min(k, slice size). The global top k is a subset of the union of the ranks'
candidates, so after one all-gather every rank picks the same k by SPEC's order: descending
score, equal scores by ascending global latent index, NaN above every number.

The ops return values = relu(pre), not the scores that ordered them, so scores are rebuilt here
in the accumulation dtype (float32; float64 for float64 inputs), as the kernels compute them:

- pre of a candidate with a positive value of float32 inputs is the value itself (bit for bit
  the kernel's pre); every other pre is recomputed as (x - b_dec) . W_enc[i] + b_enc[i] from the
  candidate's encoder row (O(N * c * d), chunked), then clamped to <= 0 where the kernel said
  so (value 0). Half-precision inputs recompute every pre, since their values are rounded.
- gradient-TopK: score = pre + (beta * relu(pre)) * |g . W_dec[i]|, the CPU kernel's expression.

A recomputed dot product sums in another order than the kernel, so for arbitrary data two
latents from different ranks whose scores differ in the last bit may swap; with exactly
representable products (saekit's grid tests) the merged selection equals the unsharded op's,
ties included.
"""

from __future__ import annotations

import torch

from saekit.distributed.comm import gather_candidates
from saekit.ops import reference

# Rows per chunk of the score recomputation: the gathered rows take chunk * c * d floats.
_RECOMPUTE_ELEMENTS = 1 << 22


def _rows_dot(vectors: torch.Tensor, table: torch.Tensor, local: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """out[n, j] = vectors[n] . table[local[n, j]] in ``acc``: [N, d], [Ms, d], [N, c] -> [N, c].
    Never under autocast: the merge must rank the candidates by the kernels' float32 scores."""
    N, c = local.shape
    d = vectors.shape[1]
    out = torch.empty(N, c, dtype=acc, device=vectors.device)
    step = max(1, _RECOMPUTE_ELEMENTS // max(1, c * d))
    with torch.autocast(vectors.device.type, enabled=False):
        for s in range(0, N, step):
            rows = table[local[s:s + step]].to(acc)  # [n, c, d]
            out[s:s + step] = torch.bmm(rows, vectors[s:s + step].to(acc).unsqueeze(-1)).squeeze(-1)
    return out


def candidate_pre(values, local, x, W_enc, b_enc, b_dec) -> torch.Tensor:
    """Pre-activations of a rank's candidates in the accumulation dtype.

    values [N, c] (relu(pre) from the op), local [N, c] int64 indices into this rank's slice,
    x [N, d], W_enc [Ms, d], b_enc [Ms], b_dec [d] (all as passed to the op) -> pre [N, c].
    """
    acc = reference.acc_dtype(x)
    with torch.no_grad():
        v = values.detach()
        pre = v.to(acc).clone()
        if v.dtype == acc:  # float32 / float64 values hold the kernel's pre where positive
            need = ~(v > 0)
            rows = need.any(1).nonzero().squeeze(1)
        else:  # rounded values: recompute every candidate
            need, rows = torch.ones_like(v, dtype=torch.bool), None
        if rows is None or rows.numel():
            xs, ls, ns = (x, local, need) if rows is None else (x[rows], local[rows], need[rows])
            centred = xs.detach().to(acc) - b_dec.detach().to(acc)
            recomputed = _rows_dot(centred, W_enc.detach(), ls, acc) + b_enc.detach().to(acc)[ls]
            if rows is None:
                pre = recomputed
            else:
                pre[rows] = torch.where(ns, recomputed, pre[rows])
        # The op's value is relu(its pre): a zero value means pre <= 0, a NaN value pre = NaN.
        pre = torch.where(v == 0, pre.clamp(max=0), pre)
        pre = torch.where(v.isnan(), v.to(acc), pre)
    return pre


def gradient_scores(pre, local, g, W_dec, beta: float) -> torch.Tensor:
    """score = pre + (beta * relu(pre)) * |g . W_dec[i]| for a rank's candidates.

    pre [N, c] (acc dtype), local [N, c], g [N, d] (the normalised gradient as passed to the op),
    W_dec [Ms, d] -> score [N, c] in the acc dtype.
    """
    with torch.no_grad():
        h = _rows_dot(g.detach(), W_dec.detach(), local, pre.dtype)
        return pre + (beta * torch.relu(pre)) * h.abs()


def pad_candidates(values, scores, indices, width: int, n_latents: int):
    """Pad [N, c] candidates to [N, width] with entries that can never be chosen over a real
    one: score -inf and an index past every latent (n_latents + j), value 0."""
    N, c = values.shape
    if c == width:
        return values, scores, indices
    extra = width - c
    pad_idx = torch.arange(n_latents, n_latents + extra, device=indices.device).expand(N, extra)
    return (torch.cat([values, values.new_zeros(N, extra)], 1),
            torch.cat([scores, scores.new_full((N, extra), float("-inf"))], 1),
            torch.cat([indices, pad_idx], 1))


def merge_top_k(values, scores, indices, k: int, group):
    """The global top k from every rank's candidates.

    values [N, c] (differentiable), scores [N, c], indices [N, c] int64 global, with the same c
    on every rank of ``group`` -> (values [N, k], indices [N, k]) identical on every rank,
    ordered by descending score, ties by ascending index. Gradient reaches the owning rank's
    ``values`` only.
    """
    v_all, s_all, i_all = gather_candidates(values, scores, indices, group)
    by_index = torch.sort(i_all, dim=1, stable=True).indices  # ties then fall to the lower index
    chosen = by_index.gather(1, reference.select(s_all.gather(1, by_index), k))
    return v_all.gather(1, chosen), i_all.gather(1, chosen)
