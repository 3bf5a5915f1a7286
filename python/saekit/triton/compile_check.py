"""Compile saekit's Triton kernels ahead of time for a GPU architecture, on any machine.

Triton's interpreter (the CPU tests) never runs the compiled code path, and a machine without a
GPU cannot launch it; this builds every kernel, down to a cubin with Triton's own ptxas, for the
configurations the autotuner would try, so that a compile error there shows up without a GPU:

    python -m saekit.triton.compile_check                 # sm_90 and sm_80
    python -m saekit.triton.compile_check --arch 90 --quick

It must run in a process without TRITON_INTERPRET=1 (the kernels are then defined for
compilation). Prints one line per kernel and configuration, with the registers per thread and
the bytes of spill stores and loads that ptxas reports (spills cost local-memory traffic on every
tile: issue 4 asks for no badly spilling configuration on Hopper); exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
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


@dataclass
class Resources:
    """What ptxas reports for one kernel: registers per thread, spill stores and loads (bytes)."""

    registers: int
    spill_stores: int
    spill_loads: int

    def __str__(self) -> str:
        spill = (f"spills {self.spill_stores} B stored / {self.spill_loads} B loaded"
                 if self.spill_stores or self.spill_loads else "no spills")
        return f"{self.registers} registers, {spill}"


def parse_ptxas_log(log: str) -> Resources:
    """The kernel's line of ``ptxas -v`` output -> Resources (ValueError if it has none)."""
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if regs is None or spill is None:
        raise ValueError(f"no register or spill line in the ptxas log: {log[-500:]!r}")
    return Resources(int(regs.group(1)), int(spill.group(1)), int(spill.group(2)))


def ptx_resources(ptx: str, arch: int) -> Resources:
    """Registers and spills of PTX assembled by Triton's ptxas with the options Triton uses."""
    from triton.backends.nvidia.compiler import get_ptxas

    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
                               f"--gpu-name=sm_{arch}{suffix}", src, "-o", src + ".o"],
                              capture_output=True, text=True, check=True)
    return parse_ptxas_log(proc.stderr + proc.stdout)


# Integer arguments that a launch at the issues' shapes (N = 8192, d = 768 or 4096, M = 24576 or
# 131072, k = 32 or 64) passes as multiples of 16, besides every stride.
ALIGNED_INTS = ("N", "M", "d", "k")


def launch_attrs(job: Job) -> dict:
    """The specialisation a real launch gives ``job``'s arguments at the issues' shapes: Triton
    marks every pointer aligned to 16 bytes (torch's allocations are) and every int that is a
    multiple of 16 with tt.divisibility = 16, which changes the code (vector loads, registers)."""
    attrs = {}
    for i, name in enumerate(job.fn.arg_names):
        kind = job.signature.get(name)
        if kind is None or kind == "constexpr":
            continue
        if kind.startswith("*") or name in ALIGNED_INTS or name.startswith("stride"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    return attrs


def compile_job(job: Job, arch: int) -> Resources:
    """Build ``job`` down to a cubin for sm_<arch> (raises on any compile error), specialised as
    a launch at the issues' shapes would be (launch_attrs), and return what ptxas reports."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=job.fn, signature=job.signature, constexprs=job.constexprs, attrs=launch_attrs(job))
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": job.num_warps, "num_stages": job.num_stages})
    if not compiled.asm.get("cubin"):
        raise RuntimeError("no cubin produced")
    return ptx_resources(compiled.asm["ptx"], arch)


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
                status = f"ok, {compile_job(job, arch)}"
            except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
                failed += 1
                status = f"FAILED: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            print(f"sm_{arch} {job.name}: {status} ({time.perf_counter() - start:.1f} s)", flush=True)
    print(f"{failed} failed" if failed else "all compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
