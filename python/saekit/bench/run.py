"""``saekit bench``: saekit against the dense PyTorch baseline, EleutherAI sparsify and SAELens,
on the same shapes, in one run.

    saekit bench --quick                   # CPU, small shapes, under two minutes
    saekit bench                           # the default grid of the device
    saekit bench --shape 4096 768 24576 32 --cases train_step

Writes bench_<device>.{json,md,png} under --out (default benchmarks/results) and prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from saekit.bench import harness, report
from saekit.bench.contenders import SaekitContender
from saekit.bench.grid import CASES, DTYPES, Shape, measure_shape
from saekit.bench.peers import SAELensContender, SparsifyContender
from saekit.ops import dispatch

GRIDS = {
    "quick": [(512, 128, M, 16) for M in (2048, 8192)],
    "cpu": [(4096, 768, M, 32) for M in (6144, 24576)],
    # The issues' shapes first: a run cut short keeps them.
    "cuda": [(8192, 768, 24576, 32), (8192, 4096, 131072, 64), (8192, 768, 6144, 32), (8192, 768, 98304, 32)],
}


def contenders_for(device: torch.device, include_reference: bool) -> list:
    """saekit's backends that can run on ``device``, then the peers."""
    names = [b for b in dispatch.PRIORITY.get(device.type, ()) if b != "reference"]
    if include_reference:
        names.append("reference")
    return [SaekitContender(b) for b in names] + [SparsifyContender(), SAELensContender()]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="saekit bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small CPU shapes (N=512, d=128, M in 2048/8192, k=16)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--shape", type=int, nargs=4, action="append", metavar=("N", "d", "M", "k"),
                   help="a shape to measure (repeatable); default: the device's grid")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 3 quick, 10 GPU, 5 CPU)")
    p.add_argument("--sets", type=int, default=3, help="input sets cycled through the repeats")
    p.add_argument("--no-reference", action="store_true", help="leave out saekit's dense reference backend")
    p.add_argument("--out", type=Path, default=None, help="output directory (default benchmarks/results)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # Large blocks then go to mmap and back on free, so the peak resident set of one call
        # is not hidden by memory glibc kept from earlier calls (harness.measure_peak).
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, "-m", "saekit.bench", *argv])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("saekit bench: --device cuda but torch sees no CUDA device")
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    grid = args.shape or GRIDS["quick" if args.quick else device.type]
    repeats = args.repeats or (3 if args.quick else 10 if device.type == "cuda" else 5)
    shapes = [Shape(*s, dtype) for s in grid]
    contenders = contenders_for(device, include_reference=not args.no_reference)
    prov = harness.provenance(str(device))
    print(f"saekit bench on {prov['device']}: {len(shapes)} shapes x {len(args.cases)} cases, "
          f"contenders: dense torch, {', '.join(c.name for c in contenders)}", flush=True)
    out = args.out or Path(os.environ.get("SAEKIT_RESULTS_DIR") or Path.cwd() / "benchmarks" / "results")
    stem = "bench_" + ("quick_" if args.quick else "") + device.type
    rows = []
    for i, shape in enumerate(shapes):
        print(f"[{i + 1}/{len(shapes)}] {shape.label()}", flush=True)
        rows += measure_shape(shape, device, contenders, args.cases, repeats=repeats, sets=args.sets,
                              log=lambda s: print(s, flush=True))
        # Rewritten after every shape, so that a run stopped early keeps the shapes it measured.
        payload = {"provenance": prov, "mode": "quick" if args.quick else "full", "repeats": repeats,
                   "shapes_measured": f"{i + 1} of {len(shapes)}", "rows": rows}
        paths = report.write(payload, out, stem)
    print()
    print(paths["markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values() if p is not None))
    bad = [r for r in rows if str(r.get("status", "")).startswith(("disagrees", "error"))]
    for r in bad:
        print(f"warning: {r['contender']} {r['case']} at {r['M']=}: {r['status']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
