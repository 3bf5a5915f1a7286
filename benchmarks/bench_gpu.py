"""GPU benchmark (issue 3) for every GPU backend available, bfloat16, N=8192 tokens:
encode time over the plain GEMM of the same shape (two GEMMs for g-SAE), peak memory over the
dense reference path, decode forward+backward as a fraction of the measured copy bandwidth on
the bytes they must move, and a TopKSAE training step (forward, MSE, backward) against the same
step on the reference backend. Writes results/gpu_<device>.{json,md} (or $SAEKIT_RESULTS_DIR).

``run(device="cpu", ...)`` runs the same code on tiny CPU shapes, so a test catches its faults
before a GPU run does (tests/bench/test_bench_gpu_script.py)."""

from __future__ import annotations

import contextlib
import os

import torch

import saekit
from saekit.bench import floors
from saekit.bench import harness as common
from saekit.nn import TopKSAE
from saekit.ops import dispatch

N = 8192
SHAPES = ((768, 24576, 32), (4096, 131072, 64))
GPU_BACKENDS = ("cuda", "triton")
# The CUDA encoder with its selection on the caller's stream, to measure what the overlap buys.
SERIAL = "cuda-serial"


@contextlib.contextmanager
def variant(name):
    """The saekit backend name for a row's label, with SAEKIT_CUDA_ENCODE_OVERLAP=0 set around
    the block for the serial CUDA variant."""
    if name != SERIAL:
        yield name
        return
    old = os.environ.get("SAEKIT_CUDA_ENCODE_OVERLAP")
    os.environ["SAEKIT_CUDA_ENCODE_OVERLAP"] = "0"
    try:
        yield "cuda"
    finally:
        if old is None:
            del os.environ["SAEKIT_CUDA_ENCODE_OVERLAP"]
        else:
            os.environ["SAEKIT_CUDA_ENCODE_OVERLAP"] = old


def sae_step(x, M, k, backend):
    """Median seconds of one TopKSAE step on x [N, d] (bf16): forward, MSE, backward. None when
    the step runs out of memory (the reference's dense [N, M] at the large shape may)."""
    sae = TopKSAE(x.shape[1], M, k, backend=backend, device=x.device, dtype=x.dtype)

    def step(i):
        sae.zero_grad(set_to_none=True)
        out = sae(x)
        (out.x_hat.float() - x.float()).pow(2).mean().backward()

    try:
        return common.bench("step", step, device=str(x.device), repeats=5).median_s
    except torch.OutOfMemoryError:
        return None
    finally:
        del sae
        if x.is_cuda:
            torch.cuda.empty_cache()


def _ratio(r):
    return "out of memory" if r is None else f"{r:.1f}x"


# Issue 3's goals: encode at most 1.15x its GEMM(s), decode forward+backward at least 70% of the
# copy bandwidth on the bytes it must move.
GOALS = (("encode", "encode_over_gemm", 1.15, "max"), ("g-SAE", "gsae_over_two_gemms", 1.15, "max"),
         ("decode", "decode_bandwidth_fraction", 0.70, "min"))


def goal_misses(row) -> str:
    """'all met', or the figures of a row that miss their goal."""
    misses = [f"{name} {row[key]:.2f}" for name, key, bound, kind in GOALS
              if (row[key] > bound if kind == "max" else row[key] < bound)]
    return "; ".join(misses) if misses else "all met"


def shape_rows(d, M, k, n, device, backends, bw):
    """One result row per backend for the shape (n tokens, d, M, k), bf16 on device."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, d, device=device, dtype=torch.bfloat16, generator=g)
    grad = torch.randn_like(x)
    W_enc = (torch.randn(M, d, device=device, generator=g) / d**0.5).bfloat16()
    W_dec = (torch.randn(M, d, device=device, generator=g) / d**0.5).bfloat16()
    b_enc = torch.zeros(M, device=device, dtype=torch.bfloat16)
    b_dec = torch.zeros(d, device=device, dtype=torch.bfloat16)
    dev = str(device)
    gemm = common.bench("gemm", lambda i: x @ W_enc.T, device=dev, repeats=10)
    gemm2 = common.bench("gemm2", lambda i: (x @ W_enc.T, grad @ W_dec.T), device=dev, repeats=10)
    dense_peak = common.measure_peak(lambda: torch.topk(x @ W_enc.T, k, dim=1), dev)
    ref_step = sae_step(x, M, k, "reference")
    rows = []
    for label in backends:
        with variant(label) as backend:
            rows.append(backend_row(label, backend, x, grad, W_enc, b_enc, W_dec, b_dec, k, gemm, gemm2,
                                    dense_peak, ref_step, bw))
    return rows


def backend_row(label, backend, x, grad, W_enc, b_enc, W_dec, b_dec, k, gemm, gemm2, dense_peak, ref_step, bw):
    """The ratios of one backend (saekit name `backend`, reported as `label`) at one shape,
    against that shape's GEMM timings, dense peak memory and reference step."""
    (n, d), M, dev = x.shape, W_enc.shape[0], str(x.device)
    enc = common.bench("enc", lambda i: saekit.topk_encode(x, W_enc, b_enc, b_dec, k, backend=backend),
                       device=dev)
    genc = common.bench("genc", lambda i: saekit.gradient_topk_encode(
        x, grad, W_enc, b_enc, W_dec, b_dec, k, backend=backend), device=dev)
    code = saekit.topk_encode(x, W_enc, b_enc, b_dec, k, backend=backend)
    v = code.values.detach().requires_grad_(True)
    Wd = W_dec.detach().requires_grad_(True)
    up = torch.randn(n, d, device=x.device, dtype=torch.bfloat16)

    # Skewed: one latent in every token (as early in training), the W_dec gradient's worst case.
    skewed = code.indices.clone()
    skewed[:, 0] = 0

    def dec(indices):
        def call(i):
            out = saekit.sparse_decode(v, indices, Wd, b_dec, backend=backend)
            return torch.autograd.grad(out, (v, Wd), up)
        return call

    t = common.bench("dec", dec(code.indices), device=dev)
    t_skewed = common.bench("dec_skewed", dec(skewed), device=dev)
    step = sae_step(x, M, k, backend)
    return dict(
        d=d, M=M, k=k, backend=label, encode_over_gemm=enc.median_s / gemm.median_s,
        gsae_over_two_gemms=genc.median_s / gemm2.median_s,
        peak_over_dense=(enc.peak_bytes or 0) / max(dense_peak or 1, 1),
        decode_bandwidth_fraction=floors.decode_bytes(n, d, M, k, 2) / t.median_s / bw,
        skewed_decode_bandwidth_fraction=floors.decode_bytes(n, d, M, k, 2) / t_skewed.median_s / bw,
        step_ms=None if step is None else step * 1e3,
        reference_over_step=None if step is None or ref_step is None else ref_step / step)


def run(device="cuda", n=N, shapes=SHAPES, backends=None, stem=None):
    """Benchmarks every shape; returns (rows, markdown) and writes them as <stem>.{json,md}."""
    device = torch.device(device)
    if backends is None:
        backends = [b for b in GPU_BACKENDS if dispatch.supports(b, "topk_encode", device, torch.bfloat16) is None]
        if "cuda" in backends:
            backends.insert(backends.index("cuda") + 1, SERIAL)
    bw = floors.copy_bandwidth(device)
    lines = [f"# saekit GPU benchmark, bfloat16, N={n}", "", str(common.provenance(str(device))), "",
             f"measured copy bandwidth: {bw / 1e12:.2f} TB/s", "",
             "| d | M | k | backend | encode / GEMM | g-SAE / 2 GEMMs | peak / dense | decode f+b % of bandwidth "
             "| same, one latent in every token | SAE step ms | reference step / step | goals missed |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    rows = []
    if stem is None:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        stem = "gpu_" + name.replace(" ", "_")
    for i, (d, M, k) in enumerate(shapes):
        for row in shape_rows(d, M, k, n, device, backends, bw):
            rows.append(row)
            step_ms = "out of memory" if row["step_ms"] is None else f"{row['step_ms']:.1f}"
            lines.append("| {d} | {M} | {k} | {backend} | {encode_over_gemm:.2f} | {gsae_over_two_gemms:.2f} | "
                         "{peak_over_dense:.2f} | {p:.0%} | {q:.0%} | {s} | {r} | {g} |".format(
                             p=row["decode_bandwidth_fraction"], q=row["skewed_decode_bandwidth_fraction"],
                             s=step_ms, r=_ratio(row["reference_over_step"]), g=goal_misses(row), **row))
            print(lines[-1], flush=True)
        # Rewritten after every shape, so that a run stopped early keeps the shapes it measured.
        md = "\n".join(lines) + "\n"
        common.write_results(stem, {"provenance": common.provenance(str(device)), "rows": rows,
                                    "shapes_measured": f"{i + 1} of {len(shapes)}"}, md)
    return rows, md


if __name__ == "__main__":
    print(run()[1])
