"""CPU benchmark of saekit's C++ backend against the bare GEMM, the reference and the usual
alternatives, every figure a ratio measured in the same run.

    python benchmarks/bench_cpu.py            # N=4096, d=768, M=24576, k=32, float32
    python benchmarks/bench_cpu.py --quick    # a small shape, seconds

Writes benchmarks/results/cpu_<shape>.{json,md} (or under $SAEKIT_RESULTS_DIR) and prints the
Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F


import saekit
from saekit.bench import harness as common


def make_inputs(N, d, M, k, sets, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(N, d, generator=g) for _ in range(sets)]
    grads = [torch.randn(N, d, generator=g) for _ in range(sets)]
    W_enc = torch.randn(M, d, generator=g) / d**0.5
    W_dec = torch.randn(M, d, generator=g) / d**0.5
    b_enc = torch.randn(M, generator=g) * 0.1
    b_dec = torch.randn(d, generator=g) * 0.1
    return xs, grads, W_enc, b_enc, W_dec, b_dec


def decode_fwd_bwd(decode, values, indices, W_dec, b_dec, grad_out):
    v = values.detach().requires_grad_(True)
    W = W_dec.detach().requires_grad_(True)
    b = b_dec.detach().requires_grad_(True)
    x_hat = decode(v, indices, W, b)
    x_hat.backward(grad_out)
    return x_hat, v.grad, W.grad, b.grad


def run(N, d, M, k, repeats, sets=2):
    xs, grads, W_enc, b_enc, W_dec, b_dec = make_inputs(N, d, M, k, sets)
    pick = lambda i: xs[i % sets]  # noqa: E731
    rows = {}

    def add(name, fn, **kw):
        rows[name] = common.bench(name, fn, repeats=repeats, **kw)
        t = rows[name]
        print(f"  {name:<34} {t.median_s * 1e3:9.1f} ms  peak {common.fmt_bytes(t.peak_bytes)}", flush=True)

    add("gemm x @ W_enc.T", lambda i: pick(i) @ W_enc.T)
    add("two gemms (g-SAE floor)", lambda i: (pick(i) @ W_enc.T, grads[i % sets] @ W_dec.T))
    add("topk_encode cpu", lambda i: saekit.topk_encode(pick(i), W_enc, b_enc, b_dec, k, backend="cpu"))
    add("topk_encode reference", lambda i: saekit.topk_encode(pick(i), W_enc, b_enc, b_dec, k, backend="reference"),
        warmup=0)
    add("gradient_topk_encode cpu", lambda i: saekit.gradient_topk_encode(
        pick(i), grads[i % sets], W_enc, b_enc, W_dec, b_dec, k, beta=1.0, backend="cpu"))

    code = saekit.topk_encode(xs[0], W_enc, b_enc, b_dec, k, backend="cpu")
    same = saekit.topk_encode(xs[0], W_enc, b_enc, b_dec, k, backend="reference")
    selections_agree = bool(torch.equal(code.indices, same.indices))
    grad_out = torch.randn(N, d)

    def sparse(v, idx, W, b):
        return saekit.sparse_decode(v, idx, W, b, backend="cpu")

    def bag(v, idx, W, b):
        return F.embedding_bag(idx, W, per_sample_weights=v, mode="sum") + b

    def dense(v, idx, W, b):
        return torch.zeros(v.shape[0], W.shape[0]).scatter(1, idx, v) @ W + b

    for name, fn in (("sparse_decode cpu fwd+bwd", sparse), ("embedding_bag fwd+bwd", bag),
                     ("dense decode fwd+bwd", dense)):
        add(name, lambda i, fn=fn: decode_fwd_bwd(fn, code.values, code.indices, W_dec, b_dec, grad_out))
    check = [decode_fwd_bwd(f, code.values, code.indices, W_dec, b_dec, grad_out) for f in (sparse, bag)]
    decoders_agree = all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(*check))

    t = {n: r.median_s for n, r in rows.items()}
    p = {n: r.peak_bytes for n, r in rows.items()}
    ratios = {
        "topk_encode / gemm": (t["topk_encode cpu"] / t["gemm x @ W_enc.T"], "<= 1.05"),
        "topk_encode peak / reference peak": (
            p["topk_encode cpu"] / p["topk_encode reference"] if p["topk_encode cpu"] is not None and p["topk_encode reference"] else float("nan"),
            "<= 0.25"),
        "gradient_topk_encode / two gemms": (t["gradient_topk_encode cpu"] / t["two gemms (g-SAE floor)"], "<= 1.05"),
        "sparse_decode fwd+bwd / embedding_bag fwd+bwd": (t["sparse_decode cpu fwd+bwd"] / t["embedding_bag fwd+bwd"], "<= 1.0"),
        "dense decode fwd+bwd / sparse_decode fwd+bwd": (t["dense decode fwd+bwd"] / t["sparse_decode cpu fwd+bwd"], ">= 20"),
        "topk_encode reference / cpu": (t["topk_encode reference"] / t["topk_encode cpu"], "(speed-up)"),
    }
    return rows, ratios, {"selections_agree_with_reference": selections_agree, "decoders_agree": decoders_agree}


def to_markdown(shape, prov, rows, ratios, checks):
    N, d, M, k = shape
    lines = [f"# saekit CPU benchmark: N={N}, d={d}, M={M}, k={k}, float32", "",
             f"{prov['device']}, {prov['threads']} threads, torch {prov['torch']}, commit {prov['commit']}, {prov['date']}", "",
             "| case | median ms | p20 ms | p80 ms | peak memory |", "|---|---:|---:|---:|---:|"]
    for r in rows.values():
        lines.append(f"| {r.name} | {r.median_s * 1e3:.1f} | {r.p20_s * 1e3:.1f} | {r.p80_s * 1e3:.1f} | {common.fmt_bytes(r.peak_bytes)} |")
    lines += ["", "| ratio (same run) | value | goal |", "|---|---:|---|"]
    for name, (v, goal) in ratios.items():
        lines.append(f"| {name} | {v:.3f} | {goal} |")
    lines += ["", "Checks: " + ", ".join(f"{k}={v}" for k, v in checks.items()), ""]
    return "\n".join(lines)


def main(argv=None):
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # Large blocks go straight to mmap and back on free, so the peak resident set of one
        # call (common.measure_peak) is not hidden by memory glibc kept from earlier calls.
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small shape (N=512, d=128, M=4096, k=16)")
    parser.add_argument("--shape", type=int, nargs=4, metavar=("N", "d", "M", "k"))
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    shape = tuple(args.shape) if args.shape else ((512, 128, 4096, 16) if args.quick else (4096, 768, 24576, 32))
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"saekit CPU benchmark N={shape[0]} d={shape[1]} M={shape[2]} k={shape[3]}, {torch.get_num_threads()} threads")
    prov = common.provenance("cpu")
    rows, ratios, checks = run(*shape, repeats=repeats)
    md = to_markdown(shape, prov, rows, ratios, checks)
    stem = "cpu_N{}_d{}_M{}_k{}".format(*shape)
    payload = {"provenance": prov, "shape": dict(zip("N d M k".split(), shape)), "rows": list(rows.values()),
               "ratios": {k: {"value": v, "goal": g} for k, (v, g) in ratios.items()}, "checks": checks}
    paths = common.write_results(stem, payload, md)
    print()
    print(md)
    print(f"written: {paths[0]} and {paths[1]}")
    if not all(checks.values()):
        raise SystemExit(f"outputs disagree: {checks}")


if __name__ == "__main__":
    main()
