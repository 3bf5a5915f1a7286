"""``saekit bench`` reports: a Markdown table, a JSON file and a PNG plot of time and memory
against M."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from saekit.bench import harness
from saekit.bench.grid import CASES


def _fmt(v, spec: str, none: str = "") -> str:
    return none if v is None else format(v, spec)


def to_markdown(payload: dict) -> str:
    prov = payload["provenance"]
    lines = [
        "# saekit bench",
        "",
        f"{prov['device']}; torch {prov['torch']}"
        + (f", CUDA {prov['cuda']}" if prov.get("cuda") else "")
        + f"; saekit {prov['saekit']} (commit {prov['commit']}); {prov['date']}; {prov['threads']} threads",
        "",
        "Every contender's outputs were checked against the dense PyTorch baseline before timing "
        "(relative L2 error; encode compares the first rows' codes). *floor* is the physical floor "
        "(GEMM time for encode and the training step, bytes at the measured copy bandwidth for "
        "decode) over the measured time: 1.0 would be at the floor.",
    ]
    by_shape = defaultdict(list)
    for row in payload["rows"]:
        by_shape[(row["N"], row["d"], row["M"], row["k"], row["dtype"])].append(row)
    for (N, d, M, k, dtype), rows in by_shape.items():
        lines += ["", f"## N={N}, d={d}, M={M}, k={k}, {dtype}", "",
                  "| case | contender | median ms | p20-p80 ms | peak memory | speed-up vs dense | peak vs dense | floor | rel. error | status |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            ok = r.get("status") == "ok"
            lines.append(
                f"| {r['case']} | {r['contender']} | {_fmt(r.get('median_s') and r['median_s'] * 1e3, '.2f')} | "
                + (f"{r['p20_s'] * 1e3:.2f}-{r['p80_s'] * 1e3:.2f}" if ok else "")
                + f" | {harness.fmt_bytes(r['peak_bytes']) if ok else ''} | {_fmt(r.get('speedup_vs_dense'), '.2f')}"
                f" | {_fmt(r.get('peak_vs_dense'), '.3f')} | {_fmt(r.get('floor_fraction'), '.2f')}"
                f" | {_fmt(r.get('rel_error_vs_dense'), '.1e')} | {r['status']} |"
            )
    return "\n".join(lines) + "\n"


def plot(payload: dict, path: Path) -> str | None:
    """Time and peak memory against M for each case (one line per contender), for the group of
    shapes sharing N, d, k and dtype with the most values of M. Returns why not, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no plot"
    groups = defaultdict(list)
    for r in payload["rows"]:
        if r.get("status") == "ok":
            groups[(r["N"], r["d"], r["k"], r["dtype"])].append(r)
    if not groups:
        return "no successful measurements to plot"
    (N, d, k, dtype), rows = max(groups.items(), key=lambda kv: len({r["M"] for r in kv[1]}))
    cases = [c for c in CASES if any(r["case"] == c for r in rows)]
    # One colour per contender across every panel, so the single legend reads for all of them.
    names = sorted({r["contender"] for r in rows})
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    fig, axes = plt.subplots(2, len(cases), figsize=(4 * len(cases), 6.5), squeeze=False)
    for j, case in enumerate(cases):
        for name in names:
            pts = sorted((r["M"], r["median_s"] * 1e3, (r["peak_bytes"] or 0) / 2**20) for r in rows
                         if r["case"] == case and r["contender"] == name)
            if not pts:
                continue
            Ms = [p[0] for p in pts]
            axes[0][j].plot(Ms, [p[1] for p in pts], marker="o", color=colours[name], label=name)
            axes[1][j].plot(Ms, [p[2] for p in pts], marker="o", color=colours[name], label=name)
        axes[0][j].set_title(case)
        axes[0][j].set_ylabel("median time (ms)")
        axes[1][j].set_ylabel("peak memory (MiB)")
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("M (latents)")
            ax.grid(True, alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[name], marker="o", label=name) for name in names]
    axes[0][0].legend(handles=handles, fontsize=7)
    fig.suptitle(f"saekit bench: N={N}, d={d}, k={k}, {dtype}; {payload['provenance']['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write(payload: dict, out_dir: Path, stem: str) -> dict:
    """Writes <stem>.json, <stem>.md and <stem>.png under out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = to_markdown(payload)
    png = out_dir / f"{stem}.png"
    why_not = plot(payload, png)
    if why_not:
        md += f"\n{why_not}\n"
    else:
        md += f"\n![time and memory against M]({png.name})\n"
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md", "plot": None if why_not else png}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    paths["markdown"].write_text(md)
    return paths
