"""The metrics table printed by ``saekit train`` / ``saekit eval``, one column per SAE."""

from __future__ import annotations

ROWS = (
    ("fvu", "FVU", "{:.4f}"),
    ("l0", "L0", "{:.2f}"),
    ("dead_frac", "dead latents", "{:.1%}"),
    ("dense_frac", "dense latents", "{:.1%}"),
    ("loss_clean", "loss (clean)", "{:.4f}"),
    ("loss_spliced", "loss (SAE spliced)", "{:.4f}"),
    ("loss_zero", "loss (zero-ablated)", "{:.4f}"),
    ("loss_increase", "loss increase", "{:+.4f}"),
    ("kl", "KL(clean || spliced)", "{:.4f}"),
    ("loss_recovered", "loss recovered", "{:.1%}"),
    ("mmcs", "MMCS vs true features", "{:.4f}"),
)


def format_table(results: dict, title: str | None = None) -> str:
    """A plain-text table: rows are metrics (those present in any column), columns are SAEs.

    results: {sae_name: {metric: value}}.
    """
    names = list(results)
    rows = [(label, fmt, key) for key, label, fmt in ROWS if any(key in results[n] for n in names)]
    width = max([len(label) for label, _, _ in rows] + [6])
    col = max([len(n) for n in names] + [10])
    lines = [title] if title else []
    lines.append(f"{'metric':<{width}}  " + "  ".join(f"{n:>{col}}" for n in names))
    lines.append("-" * (width + (col + 2) * len(names)))
    for label, fmt, key in rows:
        cells = [fmt.format(results[n][key]) if key in results[n] else "-" for n in names]
        lines.append(f"{label:<{width}}  " + "  ".join(f"{c:>{col}}" for c in cells))
    return "\n".join(lines)
