"""TopK SAE versus g-SAE on the toy model of superposition: the default of ``saekit train``.

1. Train the toy model (F sparse features in m < F dimensions) on its own loss.
2. Train a TopK SAE and a g-SAE on its hidden activations h, from the same initialisation on
   the same batches; the g-SAE's gradients are the toy loss's gradients with respect to h,
   summed over rows (each row's gradient is its own loss's, whatever the batch size).
3. Evaluate on held-out rows: FVU, L0, dead / dense latents, the toy loss with h replaced by
   the SAE's reconstruction (versus clean and zero-ablated h), and recovery of the true
   feature directions (mean over represented features of the best decoder-row cosine).

Under torchrun (``ctx``) every rank trains the same toy model and starts from the same SAE
weights, sharded over its latent group; rank 0 evaluates the SAEs the ranks saved together.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from saekit.eval.metrics import ReconstructionMetrics, downstream_summary, mean_max_cosine
from saekit.nn import GradientTopKSAE, TopKSAE
from saekit.toy.model import ToyConfig, save_toy_model, train_toy_model
from saekit.toy.source import ToySource, toy_activations
from saekit.training.parallel import save_final_saes, shard_saes
from saekit.training.trainer import TrainConfig, Trainer, TrainResult

RUN_NAMES = ("topk", "gradient_topk")


@dataclass
class ToyExperiment:
    """Sizes of the toy experiment. The defaults finish in well under a minute on 2 CPU cores."""

    toy: ToyConfig = field(default_factory=ToyConfig)
    toy_steps: int = 1500
    n_latents: int = 128
    k: int = 4
    k_aux: int = 32
    beta: float = 1.0
    batch_size: int = 1024
    eval_rows: int = 16384
    seed: int = 0

    @classmethod
    def fast(cls) -> "ToyExperiment":
        """A reduced size for tests and smoke runs (seconds)."""
        return cls(toy=ToyConfig(n_features=32, n_hidden=8), toy_steps=300, n_latents=64, k=3,
                   batch_size=256, eval_rows=2048)

    def to_dict(self) -> dict:
        return asdict(self)


def default_train_config(steps: int = 2000) -> TrainConfig:
    """Trainer settings of the toy run: a short warm-up, dead after 50k rows without firing,
    a checkpoint every 500 steps (and on Ctrl-C / SIGTERM)."""
    return TrainConfig(steps=steps, warmup_steps=min(50, steps // 10 + 1), dead_threshold_tokens=50_000,
                       log_every=max(1, steps // 100), autocast="none", checkpoint_every=500)


def build_saes(exp: ToyExperiment, architectures=RUN_NAMES) -> dict:
    """The SAEs to compare, all from the same initial weights (seeded)."""
    saes = {}
    for name in architectures:
        torch.manual_seed(exp.seed)
        m = exp.toy.n_hidden
        if name == "gradient_topk":
            saes[name] = GradientTopKSAE(m, exp.n_latents, exp.k, k_aux=exp.k_aux, beta=exp.beta)
        elif name == "topk":
            saes[name] = TopKSAE(m, exp.n_latents, exp.k, k_aux=exp.k_aux)
        else:
            raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(RUN_NAMES)}")
    return saes


@torch.no_grad()
def evaluate_toy(model, sae, exp: ToyExperiment) -> dict:
    """Held-out metrics of ``sae`` on toy ``model`` (rows drawn with a seed apart from training)."""
    gen = torch.Generator().manual_seed(10_000 + exp.seed)
    recon = ReconstructionMetrics(sae.n_latents)
    clean = spliced = zero = 0.0
    rows = 0
    for start in range(0, exp.eval_rows, exp.batch_size):
        features = model.sample(min(exp.batch_size, exp.eval_rows - start), gen)
        h, grad = toy_activations(model, features, need_grad=isinstance(sae, GradientTopKSAE))
        out = sae(h, grad) if isinstance(sae, GradientTopKSAE) else sae(h)
        recon.update(h, out.x_hat, out.code)
        clean += model.loss_per_row(features, model.decode(h)).sum().item()
        spliced += model.loss_per_row(features, model.decode(out.x_hat.float())).sum().item()
        zero += model.loss_per_row(features, model.decode(torch.zeros_like(h))).sum().item()
        rows += features.shape[0]
    represented = model.represented()
    mmcs, _ = mean_max_cosine(model.feature_directions()[represented], sae.W_dec)
    return {**recon.compute(), **downstream_summary(clean / rows, spliced / rows, zero / rows),
            "mmcs": mmcs, "represented_features": int(represented.sum())}


def run_toy(out_dir, exp: ToyExperiment | None = None, train_cfg: TrainConfig | None = None, *,
            architectures=RUN_NAMES, resume: bool = True, stream=None, ctx=None) -> dict:
    """Run the whole experiment into ``out_dir``; returns the results dict (also written to
    ``results.json``), with ``interrupted`` set if training was stopped by a signal.

    Files: toy_model/, <run>/ (final SAEs), checkpoints/, metrics.jsonl, results.json.
    ``ctx``: a DistributedContext (every rank calls this together; exp.batch_size is then per
    data rank and <run>/ holds one file per latent shard, read by saekit.io.load_sae). Ranks
    other than 0 return the results without "saes" (rank 0 alone evaluates).
    """
    exp = exp or ToyExperiment()
    train_cfg = train_cfg or default_train_config()
    out_dir = Path(out_dir)
    distributed = ctx is not None and ctx.backend is not None
    main = not distributed or ctx.is_main
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = train_toy_model(exp.toy, steps=exp.toy_steps, batch_size=exp.batch_size, seed=exp.seed)
    if main:
        save_toy_model(model, out_dir / "toy_model")
    saes = build_saes(exp, architectures)
    if distributed:
        saes = shard_saes(saes, ctx)
    source = ToySource(model, exp.batch_size, seed=exp.seed + 1,
                       need_grad=any(s.cfg.architecture == "gradient_topk" for s in saes.values()))
    trainer = Trainer(saes, source, train_cfg, out_dir, ctx=ctx)
    resumed = trainer.resume() if resume else False
    result: TrainResult = trainer.train(stream=stream)
    results = {"experiment": exp.to_dict(), "train": train_cfg.to_dict(), "resumed": resumed,
               "steps": result.step, "tokens": result.tokens, "interrupted": result.interrupted,
               "checkpoint": str(result.checkpoint) if result.checkpoint else None}
    if result.interrupted:
        return results
    saes = save_final_saes(saes, out_dir, ctx)
    if saes is None:  # a rank other than 0
        return results
    results["saes"] = {name: evaluate_toy(model, sae, exp) for name, sae in saes.items()}
    results["seconds"] = time.perf_counter() - t0
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results
