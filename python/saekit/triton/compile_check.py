"""Compile saekit's Triton kernels ahead of time for a GPU architecture, on any machine.

Triton's interpreter (the CPU tests) never runs the compiled code path, and a machine without a
GPU cannot launch it; this builds every kernel, down to a cubin with Triton's own ptxas, for the
configurations the autotuner would try, so that a compile error there shows up without a GPU:

    python -m saekit.triton.compile_check                 # sm_90 and sm_80
    python -m saekit.triton.compile_check --arch 90 --quick

It must run in a process without TRITON_INTERPRET=1 (the kernels are then defined for
compilation). Prints one line per kernel and configuration; exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclass
class Job:
    """One kernel build: its name, the JIT function, the signature and constexprs, the options."""

    name: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 3


def _jit(kernel):
    """The JITFunction under Triton's autotune / heuristics wrappers."""
    while not hasattr(kernel, "arg_names") or hasattr(kernel, "configs") or hasattr(kernel, "values"):
        kernel = kernel.fn
    return kernel


def _signature(fn, types: dict, constexprs: dict) -> dict:
    return {name: ("constexpr" if name in constexprs else types[name]) for name in fn.arg_names}


class _Arg:
    """What the autotuner's config pruning reads of a tensor argument."""

    def __init__(self, dtype):
        self.dtype = dtype


def encoder_jobs(dtype: str, k: int, *, gsae: bool, aux: bool, k_aux: int = 0, all_configs: bool = True,
                 tf32: bool = False):
    """Builds of the fused encoder (topk_encode / gradient_topk_encode) for one dtype and k;
    float32 products in IEEE precision (torch's default) unless ``tf32``."""
    import torch

    from saekit.triton import encode_kernel as ek

    fn = _jit(ek._topk_encode_fwd_kernel)
    t = DTYPES[dtype]
    types = {"x_ptr": f"*{t}", "W_ptr": f"*{t}", "c_ptr": "*fp32", "g_ptr": f"*{t}", "gs_ptr": "*fp32",
             "Wd_ptr": f"*{t}",
             "dead_ptr": "*u8" if aux else "*fp32", "keys_ptr": "*i64", "aux_keys_ptr": "*i64",
             "beta": "fp32"}
    types |= {name: "i32" for name in ("N", "M", "d", "k", "k_aux", "m_per_split", "stride_x", "stride_w",
                                       "stride_g", "stride_wd")}
    base = {"K_PAD": ek.next_pow2(k), "KA_PAD": ek.next_pow2(k_aux) if aux else 16, "GSAE": gsae,
            "G_SCALED": gsae and dtype == "float16", "AUX": aux,
            "CAST_FP32": False, "PRECISION": "tf32" if tf32 else "ieee"}
    configs = ek._prune(ek._configs(), {"x_ptr": _Arg(getattr(torch, dtype))}, **base)
    if not all_configs:
        configs = configs[:1]
    jobs = []
    for c in configs:
        constexprs = {**base, **c.kwargs}
        constexprs["TILE"] = ek._tile(constexprs)
        label = (f"{'gradient_topk' if gsae else 'topk'}_encode {dtype} k={k}"
                 f"{f' k_aux={k_aux}' if aux else ''}{' tf32' if tf32 else ''} BLOCK_N={c.kwargs['BLOCK_N']} "
                 f"BLOCK_D={c.kwargs['BLOCK_D']}")
        jobs.append(Job(label, fn, _signature(fn, types, constexprs), constexprs, c.num_warps, c.num_stages))
    return jobs


def sparse_jobs(dtype: str):
    """Builds of the encoder's folded bias and of the sparse decode and backward kernels."""
    from saekit.triton import encode_kernel as ek
    from saekit.triton import sparse_kernels as sk

    t = DTYPES[dtype]
    ints = {name: "i32" for name in ("N", "M", "d", "k", "stride_w", "stride_out", "stride_a")}
    fn = _jit(ek._topk_encode_bias_kernel)
    consts = {"BLOCK_M": 64, "BLOCK_D": 32}
    types = {"W_ptr": f"*{t}", "b_enc_ptr": f"*{t}", "b_dec_ptr": f"*{t}", "c_ptr": "*fp32"} | ints
    jobs = [Job(f"folded bias {dtype}", fn, _signature(fn, types, consts), consts)]
    fn = _jit(sk._sparse_decode_fwd_kernel)
    consts = {"HAS_BIAS": True, "BLOCK_N": sk._BLOCK_N, "BLOCK_D": sk._BLOCK_D}
    types = {"v_ptr": f"*{t}", "idx_ptr": "*i64", "W_ptr": f"*{t}", "b_ptr": f"*{t}", "out_ptr": f"*{t}"} | ints
    jobs.append(Job(f"sparse_decode {dtype}", fn, _signature(fn, types, consts), consts))
    fn = _jit(sk._sparse_decode_bwd_values_kernel)
    consts = {"HAS_BIAS": False, "BLOCK_N": sk._BLOCK_N, "BLOCK_K": 16, "BLOCK_D": 32}
    types = {"a_ptr": f"*{t}", "idx_ptr": "*i64", "W_ptr": f"*{t}", "b_ptr": f"*{t}", "out_ptr": "*fp32"} | ints
    jobs.append(Job(f"sparse_decode_backward values {dtype}", fn, _signature(fn, types, consts), consts, 8))
    fn = _jit(sk._sparse_decode_bwd_weight_kernel)
    consts = {"HAS_SUB": True, "BLOCK_N": sk._BLOCK_N, "BLOCK_D": sk._BLOCK_D}
    types = {"v_ptr": "*fp32", "idx_ptr": "*i64", "a_ptr": f"*{t}", "sub_ptr": f"*{t}", "out_ptr": "*fp32"} | ints
    jobs.append(Job(f"sparse_decode_backward weight {dtype}", fn, _signature(fn, types, consts), consts))
    return jobs


def all_jobs(quick: bool):
    """Every build to check; ``quick`` keeps one configuration per case and bfloat16 mostly."""
    dtypes = ("bfloat16", "float32") if quick else ("bfloat16", "float16", "float32")
    jobs = []
    for dtype in dtypes:
        jobs += encoder_jobs(dtype, 32, gsae=False, aux=False, all_configs=not quick)
        jobs += encoder_jobs(dtype, 64, gsae=True, aux=False, all_configs=not quick)
        jobs += sparse_jobs(dtype)
    jobs += encoder_jobs("bfloat16", 32, gsae=False, aux=True, k_aux=256, all_configs=not quick)
    jobs += encoder_jobs("float32", 32, gsae=False, aux=False, all_configs=not quick, tf32=True)
    return jobs


def compile_job(job: Job, arch: int) -> None:
    """Build ``job`` down to a cubin for sm_<arch> (raises on any compile error)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=job.fn, signature=job.signature, constexprs=job.constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": job.num_warps, "num_stages": job.num_stages})
    if not compiled.asm.get("cubin"):
        raise RuntimeError("no cubin produced")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m saekit.triton.compile_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, action="append", help="compute capability as 90, 80 ... (default 90, 80)")
    p.add_argument("--quick", action="store_true", help="one configuration per case; bfloat16 and float32 only")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.exit(2, "compile_check: unset TRITON_INTERPRET: the kernels are defined for the interpreter\n")
    failed = 0
    for arch in args.arch or [90, 80]:
        for job in all_jobs(args.quick):
            start = time.perf_counter()
            try:
                compile_job(job, arch)
                status = "ok"
            except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
                failed += 1
                status = f"FAILED: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            print(f"sm_{arch} {job.name}: {status} ({time.perf_counter() - start:.1f} s)", flush=True)
    print(f"{failed} failed" if failed else "all compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
