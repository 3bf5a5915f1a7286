"""The trainer on several processes: what the spawned ranks run, and the one-process references
the test builds from the same pieces.

Run as a script under torchrun (``python -m torch.distributed.run ... trainer_workers.py MODE
TRAIN-ARGS...``) it is ``saekit train`` with a fault on rank 1 (MODE "hang" or "raise") from its
second batch on.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from saekit.nn import GradientTopKSAE, TopKSAE
from saekit.toy import ToyConfig, ToySource, train_toy_model
from saekit.training import TrainConfig, Trainer
from saekit.training.source import ActivationBatch

from tests.training.signalling_source import SignallingSource

TOY = ToyConfig(n_features=16, n_hidden=6, feature_prob=0.1)
ROWS = 32  # per data rank and batch
STEPS = 6
STOP_AT = 3  # the interrupted run stops after this step
LAYOUT = (2, 2)  # data x latent, on 4 ranks
PROBE_SEED = 99


def toy_model():
    return train_toy_model(TOY, steps=100, batch_size=128)


def make_saes() -> dict:
    """The one-process SAEs every run starts from (the workers shard them)."""
    saes = {}
    for name, cls in (("topk", TopKSAE), ("gradient_topk", GradientTopKSAE)):
        torch.manual_seed(0)
        saes[name] = cls(TOY.n_hidden, 32, 3, k_aux=8)
    return saes


def train_config(**kw) -> TrainConfig:
    """Dead after 64 tokens (one global step) without firing, so AuxK runs from step 2."""
    return TrainConfig(**{"steps": STEPS, "warmup_steps": 2, "dead_threshold_tokens": 64, "log_every": 1,
                          "progress": False, "autocast": "none", "lr": 3e-3, **kw})


def source(model, **kw) -> ToySource:
    return ToySource(model, ROWS, seed=3, **kw)


def probe(model) -> ActivationBatch:
    """A held-out batch (x, grad) [64, 6] to compare trained SAEs on."""
    return ToySource(model, 64, seed=PROBE_SEED).next_batch()


class Concatenated:
    """``n`` consecutive batches of ``source`` as one: what D data ranks read in one step."""

    def __init__(self, source, n: int):
        self.source, self.n = source, n
        self.d_in, self.need_grad = source.d_in, source.need_grad

    def next_batch(self) -> ActivationBatch:
        parts = [self.source.next_batch() for _ in range(self.n)]
        grad = None if parts[0].grad is None else torch.cat([p.grad for p in parts])
        return ActivationBatch(torch.cat([p.x for p in parts]), grad)

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)


class Recording(Trainer):
    """A Trainer that keeps every latent's tokens-since-fired after each step: equal counters
    at every step mean the same latents fired (were selected) at every step."""

    def train_step(self):
        metrics = super().train_step()
        self.history = getattr(self, "history", [])
        self.history.append({name: run.tracker.tokens_since_fired.clone() for name, run in self.runs.items()})
        return metrics


def snapshot(trainer) -> dict:
    """Parameters (this rank's rows), Adam moments and dead-latent counters of every run."""
    out = {}
    for name, run in trainer.runs.items():
        for pname, p in run.sae.named_parameters():
            out[f"{name}.{pname}"] = p.detach().clone()
            state = run.optimizer.state[p]
            for key in ("exp_avg", "exp_avg_sq", "step"):
                out[f"{name}.{pname}.{key}"] = torch.as_tensor(state[key]).clone()
        out[f"{name}.since"] = run.tracker.tokens_since_fired.clone()
    return out


def mesh_training(rank, world, out_dir):
    """On a 2 x 2 layout: an uninterrupted run, its outputs on the probe batch and, from the
    same start, a run that one rank's SIGINT stops after STOP_AT steps, resumed by fresh trainers."""
    from saekit.distributed import ParallelLayout, setup_distributed, teardown_distributed
    from saekit.training.parallel import shard_saes

    ctx = setup_distributed(ParallelLayout(*LAYOUT), timeout_s=60.0, backend="gloo")
    try:
        model = toy_model()
        full = Recording(shard_saes(make_saes(), ctx), source(model), train_config(),
                         os.path.join(out_dir, "full"), ctx=ctx)
        result = full.train()
        x, grad = probe(model)
        outputs = {name: (run.sae(x, grad) if name == "gradient_topk" else run.sae(x))
                   for name, run in full.runs.items()}
        # Data rank 1 reads batches 1, 3, 5, ...: batch 2 * STOP_AT - 1 is in step STOP_AT.
        at = 2 * STOP_AT - 1 if rank == world - 1 else -1
        stopped = Trainer(shard_saes(make_saes(), ctx), SignallingSource(model, ROWS, seed=3, at=at),
                          train_config(), os.path.join(out_dir, "resumed"), ctx=ctx).train()
        resumed = Trainer(shard_saes(make_saes(), ctx), source(model), train_config(),
                          os.path.join(out_dir, "resumed"), ctx=ctx)
        assert resumed.resume()
        resumed_at = resumed.step
        resumed.train()
        sae = full.runs["topk"].sae
        torch.save({"coords": (ctx.data_rank, ctx.latent_rank), "slice": (sae.start, sae.end),
                    "full": snapshot(full), "history": full.history, "tokens": result.tokens,
                    "checkpoint": str(result.checkpoint), "outputs": outputs,
                    "stopped": (stopped.step, stopped.interrupted), "resumed_at": resumed_at,
                    "resumed": snapshot(resumed), "resumed_tokens": resumed.tokens},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        teardown_distributed()


def _faulty(mode: str):
    """ToySource.next_batch failing (``raise``) or hanging (``hang``) from its second batch on."""
    plain = ToySource.next_batch

    def next_batch(self):
        if self.position >= 2:
            if mode == "raise":
                raise RuntimeError("rank 1 fails on purpose")
            time.sleep(600)
        return plain(self)

    return next_batch


if __name__ == "__main__":
    from saekit.cli import main

    torch.set_num_threads(1)
    if os.environ.get("RANK") == "1":
        ToySource.next_batch = _faulty(sys.argv[1])
    sys.exit(main(["train", *sys.argv[2:]]))
