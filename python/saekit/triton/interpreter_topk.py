"""Bitonic top-k for Triton's CPU interpreter (imported only there; compiled Triton rejects its
reassigned constexprs, and compiled kernels use tl.topk).

``tl.topk`` finds each compare-and-swap partner with an xor reduction whose custom combine the
interpreter runs element by element in Python (about 1 s per [16, 64] int64 tile). This is the
same network with the partner pair's max and min taken by numpy reductions over the size-2 axis
of a hypercube view: x [R, L] is seen as [2] * log2(R * L), bit b of the column index is axis
ndim - 1 - b.

Sorting network: stage s (1 <= s <= log2 K) merges sorted runs of 2^(s-1) into runs of 2^s,
alternating direction with bit s of the column, so that pairs of neighbouring runs form bitonic
sequences. Past log2 K, the elementwise max of a descending and an ascending run of K holds the
K largest of both as a bitonic sequence, which one more merge sorts; this halves the columns
until K remain, the last merge in the requested direction. ``merge`` folds a sorted tile into
a sorted buffer with one such max and merge.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.standard import _elementwise_max, _elementwise_min
from triton.runtime.jit import constexpr_function


@constexpr_function
def _log2(n):
    return n.bit_length() - 1


@triton.jit
def topk(x, K: tl.constexpr, ASCENDING: tl.constexpr):
    """x [R, L] -> its K largest per row [R, K], sorted descending or ascending (R, L, K
    powers of two, K <= L).

    One function without nested jitted calls (tl.max and tl.min are jitted): the interpreter
    re-patches triton.language on every such call, which would cost more than the sort itself.
    tl.reduce with these combine functions runs as one numpy reduction there.
    """
    log_l: tl.constexpr = _log2(x.shape[1])
    log_k: tl.constexpr = _log2(K)
    n: tl.constexpr = _log2(x.numel)
    h = tl.reshape(x, [2] * n)
    # (stage, cube dims) of every merge: log_k sorting stages, then a max and a merge per halving.
    for s in tl.static_range(1, log_l + 1):
        stage: tl.constexpr = s if s <= log_k else log_k  # noqa: FURB136 (a Triton constexpr)
        dims: tl.constexpr = n if s <= log_k else n - (s - log_k)
        if s > log_k:
            h = tl.reduce(h, dims - log_k, _elementwise_max)
        if s < log_l:  # runs alternate in direction with bit `stage` of the column
            ascending = tl.reshape(tl.arange(0, 2), [1] * (dims - stage - 1) + [2] + [1] * stage)
        else:
            ascending = 1 if ASCENDING else 0
        for i in tl.static_range(stage):
            b: tl.constexpr = stage - 1 - i
            hi = tl.reduce(h, dims - 1 - b, _elementwise_max, keep_dims=True)
            lo = tl.reduce(h, dims - 1 - b, _elementwise_min, keep_dims=True)
            right = tl.reshape(tl.arange(0, 2), [1] * (dims - b - 1) + [2] + [1] * b)
            # Descending runs put the larger of each pair where bit b is 0.
            h = tl.where((right ^ ascending) == 0, hi, lo)
    return tl.reshape(h, [x.shape[0], K])


@triton.jit
def merge(best, cand):
    """The K largest of best [R, K] (descending) and cand [R, K] (ascending), descending.

    Their elementwise max holds the K largest of both as a bitonic sequence; one merge of
    log2 K compare-and-swap rounds sorts it.
    """
    K: tl.constexpr = best.shape[1]
    log_k: tl.constexpr = _log2(K)
    n: tl.constexpr = _log2(best.numel)
    h = tl.reshape(tl.maximum(best, cand), [2] * n)
    for i in tl.static_range(log_k):
        b: tl.constexpr = log_k - 1 - i
        hi = tl.reduce(h, n - 1 - b, _elementwise_max, keep_dims=True)
        lo = tl.reduce(h, n - 1 - b, _elementwise_min, keep_dims=True)
        right = tl.reshape(tl.arange(0, 2), [1] * (n - b - 1) + [2] + [1] * b)
        h = tl.where(right == 0, hi, lo)
    return tl.reshape(h, [best.shape[0], K])
