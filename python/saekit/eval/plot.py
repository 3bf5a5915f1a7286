"""The PNG of a training run: FVU and dead latents over training, and the final metrics."""

from __future__ import annotations

from pathlib import Path

from saekit.training.monitor import read_metrics


def plot_run(out_dir, results: dict, file: str = "summary.png") -> Path:
    """Write ``<out_dir>/<file>`` from metrics.jsonl and ``results['saes']``; returns its path.

    Needs matplotlib (``pip install matplotlib`` or ``pip install saekit[plot]``); raises
    ImportError with that hint when it is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install matplotlib (or saekit[plot])") from None
    out_dir = Path(out_dir)
    records = read_metrics(out_dir)
    names = list(results["saes"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name in names:
        steps = [r["step"] for r in records if f"{name}/fvu" in r]
        axes[0].plot(steps, [r[f"{name}/fvu"] for r in records if f"{name}/fvu" in r], label=name)
        axes[1].plot(steps, [r[f"{name}/dead"] for r in records if f"{name}/dead" in r], label=name)
    axes[0].set(title="training FVU", xlabel="step", yscale="log")
    axes[1].set(title="dead latent fraction", xlabel="step")
    keys = [k for k in ("fvu", "loss_increase", "loss_recovered", "dead_frac", "kl", "mmcs")
            if all(k in results["saes"][n] for n in names)]
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        axes[2].bar([j + i * width for j in range(len(keys))], [results["saes"][name][k] for k in keys],
                    width, label=name)
    axes[2].set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(keys))], keys, rotation=20)
    axes[2].set(title="held-out evaluation")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / file
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
