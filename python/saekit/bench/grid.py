"""The measurement loop of ``saekit bench``: for every shape, case and contender, check the
outputs against the dense baseline, then time (warm-up, median over repeats, several input
sets cycled) and take the peak memory."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from saekit.bench import floors, harness
from saekit.bench.contenders import Contender, DenseContender, Unsupported, Weights

CASES = ("encode", "gradient_encode", "decode", "train_step")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Relative L2 error allowed against the dense baseline: float32 differs by summation order only;
# half precision also by where the baseline rounds its [N, M] product before selecting.
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 5e-2}
AGREEMENT_ROWS = 512


@dataclass(frozen=True)
class Shape:
    N: int
    d: int
    M: int
    k: int
    dtype: str

    def label(self) -> str:
        return f"N={self.N} d={self.d} M={self.M} k={self.k} {self.dtype}"


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float32 (0 when both are zero)."""
    a, b = a.float(), b.float()
    denom = b.norm().item()
    num = (a - b).norm().item()
    return num / denom if denom > 0 else num


def _dense_code(code, M: int) -> torch.Tensor:
    values, indices = code
    rows = values[:AGREEMENT_ROWS].float()
    return torch.zeros(rows.shape[0], M, device=rows.device).scatter_add_(1, indices[:AGREEMENT_ROWS], rows)


def _error(case: str, out, oracle, M: int) -> float:
    """Largest relative error of a contender's case outputs against the baseline's."""
    if case in ("encode", "gradient_encode"):
        return rel_error(_dense_code(out, M), _dense_code(oracle, M))
    if case == "decode":
        return max(rel_error(a, b) for a, b in zip(out, oracle))
    loss, grads = out
    ref_loss, ref_grads = oracle
    return max([rel_error(loss, ref_loss)] + [rel_error(grads[n], ref_grads[n]) for n in ref_grads])


class Inputs:
    """Input sets cycled by the timing loop so caches do not flatter: x and grad [N, d]; the
    decode case's code comes from the baseline's encode of each x, grad_out [N, d]."""

    def __init__(self, shape: Shape, device, sets: int, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        dtype = DTYPES[shape.dtype]
        make = lambda: torch.randn(shape.N, shape.d, generator=g).to(device=device, dtype=dtype)  # noqa: E731
        self.x = [make() for _ in range(sets)]
        self.grad = [make() for _ in range(sets)]
        self.grad_out = [make() for _ in range(sets)]
        self.codes = []

    def args(self, case: str, i: int) -> tuple:
        i %= len(self.x)
        if case == "encode" or case == "train_step":
            return (self.x[i],)
        if case == "gradient_encode":
            return (self.x[i], self.grad[i])
        return (*self.codes[i], self.grad_out[i])


def _run(contender: Contender, case: str, args: tuple):
    out = getattr(contender, case)(*args)
    return contender.to_code(out) if case in ("encode", "gradient_encode") else out


def measure_shape(shape: Shape, device: torch.device, contenders: list, cases, *, repeats: int, sets: int,
                  log=print) -> list[dict]:
    """Rows (dicts) for one shape: every case for every contender, with status and figures."""
    dtype = DTYPES[shape.dtype]
    w = Weights.random(shape.d, shape.M, shape.k, dtype, device)
    inputs = Inputs(shape, device, sets)
    baseline = DenseContender()
    baseline.setup(w)
    with torch.no_grad():
        inputs.codes = [tuple(baseline.encode(x)) for x in inputs.x]
    elem = torch.finfo(dtype).bits // 8
    floor_s = {
        "encode": floors.gemm_seconds(inputs.x[0], w.W_enc, repeats),
        "decode": floors.decode_bytes(shape.N, shape.d, shape.M, shape.k, elem) / floors.copy_bandwidth(device),
    }
    floor_s["gradient_encode"] = 2 * floor_s["encode"]
    floor_s["train_step"] = floor_s["encode"]
    rows = []
    ready = {}
    for c in contenders:
        reason = c.unavailable(device, dtype)
        if reason is None:
            try:
                c.setup(w)
            except Exception as e:  # a peer failing to build is reported, not raised
                reason = f"setup failed: {type(e).__name__}: {e}"
        ready[c.name] = reason
    for case in cases:
        oracle = _run(baseline, case, inputs.args(case, 0))
        dense_median = None
        for c in [baseline] + [c for c in contenders if c.name != baseline.name]:
            row = {**asdict(shape), "case": case, "contender": c.name, "floor_s": floor_s[case]}
            rows.append(row)
            if ready.get(c.name) is not None:
                row["status"] = f"unavailable: {ready[c.name]}"
                continue
            try:
                out = _run(c, case, inputs.args(case, 0))
                err = 0.0 if c is baseline else _error(case, out, oracle, shape.M)
                del out
            except Unsupported as e:
                row["status"] = f"unsupported: {e}"
                continue
            except Exception as e:
                row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                continue
            row["rel_error_vs_dense"] = err
            row["agrees"] = bool(err <= TOLERANCE[shape.dtype]) and math.isfinite(err)
            if not row["agrees"]:
                row["status"] = f"disagrees: relative error {err:.3g} > {TOLERANCE[shape.dtype]}"
                continue
            t = harness.bench(f"{case} {c.name}", lambda i, c=c: _run(c, case, inputs.args(case, i)),
                              device=str(device), repeats=repeats)
            row.update(status="ok", median_s=t.median_s, p20_s=t.p20_s, p80_s=t.p80_s, peak_bytes=t.peak_bytes,
                       floor_fraction=floor_s[case] / t.median_s)
            if c is baseline:
                dense_median = t.median_s
            if dense_median is not None:
                row["speedup_vs_dense"] = dense_median / t.median_s
            log(f"  {case:<16} {c.name:<18} {t.median_s * 1e3:10.2f} ms  peak {harness.fmt_bytes(t.peak_bytes):>9}"
                f"  floor {row['floor_fraction']:.2f}")
        for row in rows:
            if row["case"] == case and row["contender"] == baseline.name and row.get("status") == "ok":
                peak = row["peak_bytes"]
                for other in rows:
                    if other["case"] == case and other.get("peak_bytes") is not None and peak:
                        other["peak_vs_dense"] = other["peak_bytes"] / peak
    return rows
