"""GPU benchmark (issue 3) for every GPU backend available, bfloat16, N=8192 tokens:
encode time over the plain GEMM of the same shape (two GEMMs for g-SAE), peak memory over the
dense reference path, decode forward+backward as a fraction of the measured copy bandwidth on
the bytes they must move. Writes results/gpu_<device>.{json,md} (or $SAEKIT_RESULTS_DIR)."""

from __future__ import annotations

import torch

import saekit
from saekit.bench import floors
from saekit.bench import harness as common
from saekit.ops import dispatch

N = 8192
SHAPES = ((768, 24576, 32), (4096, 131072, 64))


def main():
    dev = torch.device("cuda")
    bw = floors.copy_bandwidth(dev)
    backends = [b for b in ("cuda", "triton") if dispatch.supports(b, "topk_encode", dev, torch.bfloat16) is None]
    lines = [f"# saekit GPU benchmark, bfloat16, N={N}", "", str(common.provenance("cuda")), "",
             f"measured copy bandwidth: {bw / 1e12:.2f} TB/s", "",
             "| d | M | k | backend | encode / GEMM | g-SAE / 2 GEMMs | peak / dense | decode f+b % of bandwidth |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    rows = []
    for d, M, k in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(N, d, device="cuda", dtype=torch.bfloat16, generator=g)
        grad = torch.randn_like(x)
        W_enc = (torch.randn(M, d, device="cuda", generator=g) / d**0.5).bfloat16()
        W_dec = (torch.randn(M, d, device="cuda", generator=g) / d**0.5).bfloat16()
        b_enc, b_dec = torch.zeros(M, device="cuda", dtype=torch.bfloat16), torch.zeros(d, device="cuda", dtype=torch.bfloat16)
        gemm = common.bench("gemm", lambda i: x @ W_enc.T, device="cuda", repeats=10)
        gemm2 = common.bench("gemm2", lambda i: (x @ W_enc.T, grad @ W_dec.T), device="cuda", repeats=10)
        dense_peak = common.measure_peak(lambda: torch.topk(x @ W_enc.T, k, dim=1), "cuda")
        for backend in backends:
            enc = common.bench("enc", lambda i: saekit.topk_encode(x, W_enc, b_enc, b_dec, k, backend=backend), device="cuda")
            genc = common.bench("genc", lambda i: saekit.gradient_topk_encode(x, grad, W_enc, b_enc, W_dec, b_dec, k, backend=backend), device="cuda")
            code = saekit.topk_encode(x, W_enc, b_enc, b_dec, k, backend=backend)
            v = code.values.detach().requires_grad_(True)
            Wd = W_dec.detach().requires_grad_(True)
            up = torch.randn(N, d, device="cuda", dtype=torch.bfloat16)

            def dec(i):
                out = saekit.sparse_decode(v, code.indices, Wd, b_dec, backend=backend)
                return torch.autograd.grad(out, (v, Wd), up)

            t = common.bench("dec", dec, device="cuda")
            moved = floors.decode_bytes(N, d, M, k, 2)
            row = dict(d=d, M=M, k=k, backend=backend, encode_over_gemm=enc.median_s / gemm.median_s,
                       gsae_over_two_gemms=genc.median_s / gemm2.median_s,
                       peak_over_dense=(enc.peak_bytes or 0) / max(dense_peak or 1, 1),
                       decode_bandwidth_fraction=moved / t.median_s / bw)
            rows.append(row)
            lines.append("| {d} | {M} | {k} | {backend} | {encode_over_gemm:.2f} | {gsae_over_two_gemms:.2f} | "
                         "{peak_over_dense:.2f} | {p:.0%} |".format(p=row["decode_bandwidth_fraction"], **row))
            print(lines[-1], flush=True)
    md = "\n".join(lines) + "\n"
    common.write_results("gpu_" + torch.cuda.get_device_name().replace(" ", "_"), {"provenance": common.provenance("cuda"), "rows": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
