"""The fused encoder forward: GEMM tiles, bias, ReLU, g-SAE score and streaming top-k in one pass.

Each program owns BLOCK_N rows and one split of the latents. It walks that split in tiles of
TILE latents; for every tile it forms pre = x @ W_enc[tile].T + c[tile] with tl.dot (float32
accumulation), for g-SAE also h = g @ W_dec[tile].T on the same tiling, turns the scores into
packed keys (saekit.triton.keys) and merges them into a per-row buffer of the K_PAD best keys,
and likewise for the dead-latent AuxK buffer. Each split writes its buffers once; the caller
merges the splits' candidates exactly (the global top k lies in the union of the splits' top k).

The bias is folded: c = b_enc - W_enc @ b_dec in float32, so the product runs on the raw input
dtype (tensor cores for 16-bit inputs) while the subtraction of b_dec keeps float32 accuracy.
Nothing of size N x M is ever written: working memory is one [BLOCK_N, TILE] float32 tile (two
for g-SAE) and [BLOCK_N, K_PAD (+ KA_PAD)] int64 keys per program, plus the [N, splits, K_PAD]
candidates in global memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from saekit.triton import INTERPRETED
from saekit.triton.keys import merge_top, score_keys

_INTERPRETED = tl.constexpr(INTERPRETED)


def _configs():
    if INTERPRETED:
        # The interpreter would time every config; large tiles mean fewer interpreted steps.
        return [triton.Config({"BLOCK_N": 64, "BLOCK_M": 128, "BLOCK_D": 32}, num_warps=4)]
    return [triton.Config({"BLOCK_N": bn, "BLOCK_M": 64, "BLOCK_D": bd}, num_warps=8, num_stages=3)
            for bn in (64, 32, 16) for bd in (64, 32)]


def _tile(meta) -> int:
    return max(meta["BLOCK_M"], meta["K_PAD"], meta["KA_PAD"] if meta["AUX"] else 0)


def _prune(configs, named_args, **kwargs):
    """Configs that ptxas (Triton 3.8, sm_90a, 8 warps) compiled without spills: the
    [BLOCK_N, 2 * TILE] int64 keys of a merge (plus the AuxK buffer) within 8192 elements, 4096
    for g-SAE or float32 (whose FMA dot also holds its operands in registers, hence BLOCK_D 32
    there), and tiles of at most 128 latents. k or k_aux above 128 keeps the smallest config,
    which spills (about 800 bytes at k = 256, 1.1 KB at k_aux = 256; `python -m
    saekit.triton.compile_check` prints every config's registers and spills)."""
    fp32 = named_args["x_ptr"].dtype == torch.float32
    keep, fallback = [], []
    for c in configs:
        meta = {**kwargs, **c.kwargs}
        if (c.kwargs["BLOCK_D"] == 32) != fp32:
            continue
        tile = _tile(meta)
        keys = c.kwargs["BLOCK_N"] * 2 * (tile + (meta["KA_PAD"] if meta["AUX"] else 0))
        budget = 4096 if meta["GSAE"] or fp32 else 8192
        (keep if keys <= budget and tile <= 128 else fallback).append(c)
    return keep or [min(fallback, key=lambda c: c.kwargs["BLOCK_N"])]


@triton.jit
def _topk_encode_bias_kernel(W_ptr, b_enc_ptr, b_dec_ptr, c_ptr, M, d, stride_w,
                             BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """c[m] = b_enc[m] - sum_d W[m, d] * b_dec[d], in float32."""
    cols = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    col_ok = cols < M
    acc = tl.zeros([BLOCK_M], tl.float32)
    for d0 in range(0, d, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_ok = dd < d
        w = tl.load(W_ptr + cols[:, None].to(tl.int64) * stride_w + dd[None, :],
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        bd = tl.load(b_dec_ptr + dd, mask=d_ok, other=0.0).to(tl.float32)
        acc += tl.sum(w * bd[None, :], 1)
    be = tl.load(b_enc_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(c_ptr + cols, be - acc, mask=col_ok)


@triton.jit
def gsae_score(pre, h, beta):
    """SPEC 2's score pre + (beta * relu(pre)) * |h| (float32), rounded step by step as the
    reference rounds it. Compiled, Triton would contract the product and the add into one FMA
    (one rounding instead of two, so near-ties could order differently from the reference);
    mul.rn, an explicitly rounded multiply, is never contracted. A NaN pre gives a NaN score
    either way."""
    bz = beta * tl.where(pre > 0, pre, 0.0)
    if _INTERPRETED:
        return pre + bz * tl.abs(h)
    prod = tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=r,r,r", [bz, tl.abs(h)],
                                     dtype=tl.float32, is_pure=True, pack=1)
    return pre + prod


@triton.jit
def _product_tile(a_ptr, stride_a, rows, row_ok, W_ptr, stride_w, cols, col_ok, d,
                  BLOCK_N: tl.constexpr, TILE: tl.constexpr, BLOCK_D: tl.constexpr,
                  CAST_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """a[rows] @ W[cols].T -> [BLOCK_N, TILE] float32."""
    acc = tl.zeros([BLOCK_N, TILE], tl.float32)
    a_rows = a_ptr + rows[:, None].to(tl.int64) * stride_a
    w_rows = W_ptr + cols[:, None].to(tl.int64) * stride_w
    for d0 in range(0, d, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_ok = dd < d
        a = tl.load(a_rows + dd[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        w = tl.load(w_rows + dd[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        if CAST_FP32:  # the interpreter has no bfloat16 arithmetic
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, tl.trans(w), acc, input_precision=PRECISION)
    return acc


@triton.autotune(configs=_configs(), key=["M", "d", "K_PAD", "KA_PAD", "GSAE", "PRECISION"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.heuristics({"TILE": _tile})
@triton.jit
def _topk_encode_fwd_kernel(
    x_ptr, W_ptr, c_ptr, g_ptr, gs_ptr, Wd_ptr, dead_ptr, keys_ptr, aux_keys_ptr,
    N, M, d, k, k_aux, m_per_split, beta,
    stride_x, stride_w, stride_g, stride_wd,
    K_PAD: tl.constexpr, KA_PAD: tl.constexpr, GSAE: tl.constexpr, G_SCALED: tl.constexpr, AUX: tl.constexpr,
    CAST_FP32: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, TILE: tl.constexpr,
):
    """Per (row block, split): the K_PAD (KA_PAD) best keys of each row, written to
    keys [N, splits, K_PAD] (aux_keys [N, splits, KA_PAD]), sorted descending."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    split = tl.program_id(1)
    m_lo = split * m_per_split
    m_hi = tl.minimum(M, m_lo + m_per_split)
    best = tl.full([BLOCK_N, K_PAD], -(2**63), tl.int64)
    aux_best = tl.full([BLOCK_N, KA_PAD], -(2**63), tl.int64)
    k_slot = tl.arange(0, K_PAD)[None, :] < k
    ka_slot = tl.arange(0, KA_PAD)[None, :] < k_aux
    for m0 in range(m_lo, m_hi, TILE):
        cols = m0 + tl.arange(0, TILE)
        col_ok = cols < m_hi
        pre = _product_tile(x_ptr, stride_x, rows, row_ok, W_ptr, stride_w, cols, col_ok, d,
                            BLOCK_N, TILE, BLOCK_D, CAST_FP32, PRECISION)
        pre += tl.load(c_ptr + cols, mask=col_ok, other=0.0)[None, :]
        if GSAE:
            h = _product_tile(g_ptr, stride_g, rows, row_ok, Wd_ptr, stride_wd, cols, col_ok, d,
                              BLOCK_N, TILE, BLOCK_D, CAST_FP32, PRECISION)
            if G_SCALED:  # g's rows were divided by these powers of two (exact)
                h = h * tl.load(gs_ptr + rows, mask=row_ok, other=1.0)[:, None]
            score = gsae_score(pre, h, beta)
        else:
            score = pre
        keys = score_keys(score, cols)
        keys = tl.where(col_ok[None, :], keys, -(2**63))
        # Merge only when some row has a key above its current k-th best.
        kth = tl.min(tl.where(k_slot, best, 2**63 - 1), 1)
        if tl.max((keys > kth[:, None]).to(tl.int32)) > 0:
            best = merge_top(best, keys, K_PAD, TILE)
        if AUX:
            dead = tl.load(dead_ptr + cols, mask=col_ok, other=0) != 0
            aux = tl.where(dead[None, :], keys, -(2**63))
            aux_kth = tl.min(tl.where(ka_slot, aux_best, 2**63 - 1), 1)
            if tl.max((aux > aux_kth[:, None]).to(tl.int32)) > 0:
                aux_best = merge_top(aux_best, aux, KA_PAD, TILE)
    splits = tl.num_programs(1)
    out = keys_ptr + (rows[:, None].to(tl.int64) * splits + split) * K_PAD + tl.arange(0, K_PAD)[None, :]
    tl.store(out, best, mask=row_ok[:, None])
    if AUX:
        out = aux_keys_ptr + (rows[:, None].to(tl.int64) * splits + split) * KA_PAD \
            + tl.arange(0, KA_PAD)[None, :]
        tl.store(out, aux_best, mask=row_ok[:, None])


def folded_bias(W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """c = b_enc - W_enc @ b_dec: [M, d], [M], [d] -> [M] float32."""
    M, d = W_enc.shape
    c = torch.empty(M, dtype=torch.float32, device=W_enc.device)
    if M:
        _topk_encode_bias_kernel[(triton.cdiv(M, 64),)](
            W_enc, b_enc, b_dec, c, M, d, W_enc.stride(0), BLOCK_M=64, BLOCK_D=32)
    return c


def _splits(N: int, M: int, device: torch.device) -> int:
    """Latent splits so that row blocks times splits fill the device about twice over."""
    slots = 2 * (torch.cuda.get_device_properties(device).multi_processor_count
                 if device.type == "cuda" else 2)
    row_blocks = max(1, triton.cdiv(N, 64))
    min_latents = 1024 if device.type == "cuda" else 256
    return max(1, min(triton.cdiv(slots, row_blocks), M // min_latents))


def _precision(dtype: torch.dtype) -> str:
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    return "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"


def next_pow2(n: int) -> int:
    """The smallest power of two >= max(n, 16) (Triton tiles are powers of two, dots >= 16)."""
    return max(16, triton.next_power_of_2(n))


def select_keys(x, W_enc, c, k, *, g=None, g_scale=None, W_dec=None, beta=0.0, dead=None, k_aux=0,
                splits=None):
    """Candidate keys of the fused encoder.

    x [N, d], W_enc [M, d], c [M] float32 (folded bias); for g-SAE g [N, d] and W_dec [M, d]
    (same dtype as x), optionally g_scale [N] float32 (powers of two that g's rows were divided
    by) and beta; for AuxK dead [M] bool and k_aux. All contiguous.

    Returns (keys [N, S, K_PAD], aux_keys [N, S, KA_PAD] or None) int64, each split's best keys
    sorted descending; K_PAD = next_pow2(k), KA_PAD = next_pow2(k_aux), S = splits.
    """
    N, d = x.shape
    M = W_enc.shape[0]
    gsae, aux = g is not None, dead is not None and k_aux > 0
    S = splits or _splits(N, M, x.device)
    K_PAD, KA_PAD = next_pow2(k), next_pow2(k_aux) if aux else 16
    keys = torch.empty(N, S, K_PAD, dtype=torch.int64, device=x.device)
    aux_keys = torch.empty(N, S, KA_PAD, dtype=torch.int64, device=x.device) if aux else None
    if N == 0:
        return keys, aux_keys
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), S)
    _topk_encode_fwd_kernel[grid](
        x, W_enc, c, g if gsae else x, g_scale if g_scale is not None else c, W_dec if gsae else W_enc,
        dead.view(torch.uint8) if aux else c, keys, aux_keys if aux else keys,
        N, M, d, k, k_aux if aux else 0, triton.cdiv(M, S), float(beta),
        x.stride(0), W_enc.stride(0), (g if gsae else x).stride(0), (W_dec if gsae else W_enc).stride(0),
        K_PAD=K_PAD, KA_PAD=KA_PAD, GSAE=gsae, G_SCALED=gsae and g_scale is not None, AUX=aux,
        CAST_FP32=INTERPRETED, PRECISION=_precision(x.dtype),
    )
    return keys, aux_keys
