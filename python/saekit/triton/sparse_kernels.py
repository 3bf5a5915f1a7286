"""Gather and scatter kernels over a sparse code (values [N, k], indices [N, k] into [M, d] rows).

Three primitives serve both the decoder and the encoder backward:
- gather_sum:   out[n] = sum_j values[n, j] * W[indices[n, j]] (+ bias)      (decode, encoder dx)
- gather_dot:   out[n, j] = a[n] . W[indices[n, j]] (+ bias[indices[n, j]])  (decode dvalues)
- scatter_rows: out[i] = sum over indices[n, j] == i of values[n, j] * (a[n] - sub)  (dW)
All accumulate in float32 and touch only the N x k selected rows. scatter_rows adds into a
float32 [M, d] buffer with atomics (order of additions, hence last bits, may vary run to run).
Indices must lie in [0, M) (the callers check); loads are masked to [0, M) regardless.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from saekit.triton import INTERPRETED

_BLOCK_N = 16
_BLOCK_D = 32 if INTERPRETED else 128


@triton.jit
def _sparse_decode_fwd_kernel(v_ptr, idx_ptr, W_ptr, b_ptr, out_ptr, N, M, d, k,
                              stride_w, stride_out, HAS_BIAS: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok, d_ok = rows < N, dd < d
    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for j in range(k):
        at = rows.to(tl.int64) * k + j
        i = tl.load(idx_ptr + at, mask=row_ok, other=0).to(tl.int64)  # 64-bit row offsets
        ok = row_ok & (i >= 0) & (i < M)
        v = tl.load(v_ptr + at, mask=ok, other=0.0).to(tl.float32)
        w = tl.load(W_ptr + i[:, None] * stride_w + dd[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
        acc += v[:, None] * w.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + dd, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows[:, None].to(tl.int64) * stride_out + dd[None, :]
    tl.store(out, acc, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _sparse_decode_bwd_values_kernel(a_ptr, idx_ptr, W_ptr, b_ptr, out_ptr, N, M, d, k,
                                     stride_a, stride_w, HAS_BIAS: tl.constexpr,
                                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                     BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    js = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    at = rows[:, None].to(tl.int64) * k + js[None, :]
    sel_ok = (rows < N)[:, None] & (js < k)[None, :]
    i = tl.load(idx_ptr + at, mask=sel_ok, other=0).to(tl.int64)  # 64-bit row offsets
    ok = sel_ok & (i >= 0) & (i < M)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for d0 in range(0, d, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_ok = dd < d
        a = tl.load(a_ptr + rows[:, None].to(tl.int64) * stride_a + dd[None, :],
                    mask=(rows < N)[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        w = tl.load(W_ptr + i[:, :, None] * stride_w + dd[None, None, :],
                    mask=ok[:, :, None] & d_ok[None, None, :], other=0.0).to(tl.float32)
        acc += tl.sum(a[:, None, :] * w, 2)
    if HAS_BIAS:
        acc += tl.load(b_ptr + i, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + at, acc, mask=sel_ok)


@triton.jit
def _sparse_decode_bwd_weight_kernel(v_ptr, idx_ptr, a_ptr, sub_ptr, out_ptr, N, M, d, k,
                                     stride_a, HAS_SUB: tl.constexpr,
                                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok, d_ok = rows < N, dd < d
    a = tl.load(a_ptr + rows[:, None].to(tl.int64) * stride_a + dd[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    if HAS_SUB:
        a -= tl.load(sub_ptr + dd, mask=d_ok, other=0.0).to(tl.float32)[None, :]
    for j in range(k):
        at = rows.to(tl.int64) * k + j
        i = tl.load(idx_ptr + at, mask=row_ok, other=0).to(tl.int64)  # 64-bit row offsets
        v = tl.load(v_ptr + at, mask=row_ok, other=0.0).to(tl.float32)
        ok = row_ok & (i >= 0) & (i < M) & (v != 0.0)
        # Independent additions: no ordering needed (relaxed, not the default acq_rel).
        tl.atomic_add(out_ptr + i[:, None] * d + dd[None, :], v[:, None] * a,
                      mask=ok[:, None] & d_ok[None, :], sem="relaxed")


def gather_sum(values, indices, W, bias=None, out_dtype=None):
    """values [N, k], indices [N, k] int64, W [M, d], bias [d] or None -> [N, d] (out_dtype,
    default values.dtype): sum_j values[n, j] * W[indices[n, j]] + bias."""
    N, k = values.shape
    M, d = W.shape
    out_dtype = out_dtype or values.dtype
    # The interpreter rounds float32 to bfloat16 towards zero; torch rounds to nearest even.
    store_dtype = torch.float32 if INTERPRETED else out_dtype
    out = torch.empty(N, d, dtype=store_dtype, device=values.device)
    if N and d:
        grid = (triton.cdiv(N, _BLOCK_N), triton.cdiv(d, _BLOCK_D))
        _sparse_decode_fwd_kernel[grid](
            values, indices, W, W if bias is None else bias, out, N, M, d, k, W.stride(0), out.stride(0),
            HAS_BIAS=bias is not None, BLOCK_N=_BLOCK_N, BLOCK_D=_BLOCK_D)
    return out.to(out_dtype)


def gather_dot(a, indices, W, bias=None):
    """a [N, d], indices [N, k] int64, W [M, d], bias [M] or None -> [N, k] float32:
    a[n] . W[indices[n, j]] + bias[indices[n, j]]."""
    N, k = indices.shape
    M, d = W.shape
    out = torch.empty(N, k, dtype=torch.float32, device=a.device)
    if N and k:
        block_k = min(16, max(1, triton.next_power_of_2(k)))
        grid = (triton.cdiv(N, _BLOCK_N), triton.cdiv(k, block_k))
        _sparse_decode_bwd_values_kernel[grid](
            a, indices, W, W if bias is None else bias, out, N, M, d, k, a.stride(0), W.stride(0),
            HAS_BIAS=bias is not None, BLOCK_N=_BLOCK_N, BLOCK_K=block_k, BLOCK_D=32, num_warps=8)
    return out


def scatter_rows(values, indices, a, M, sub=None):
    """values [N, k], indices [N, k] int64, a [N, d], sub [d] or None -> [M, d] float32:
    out[i] = sum over (n, j) with indices[n, j] == i of values[n, j] * (a[n] - sub)."""
    N, k = values.shape
    d = a.shape[1]
    out = torch.zeros(M, d, dtype=torch.float32, device=a.device)
    if N and k and d:
        grid = (triton.cdiv(N, _BLOCK_N), triton.cdiv(d, _BLOCK_D))
        _sparse_decode_bwd_weight_kernel[grid](
            values, indices, a, a if sub is None else sub, out, N, M, d, k, a.stride(0),
            HAS_SUB=sub is not None, BLOCK_N=_BLOCK_N, BLOCK_D=_BLOCK_D)
    return out
