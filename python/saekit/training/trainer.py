"""The SAE trainer: one activation stream feeding one or more SAEs (e.g. TopK and g-SAE side
by side on the same tokens), with everything needed to stop and resume exactly.

Per optimizer step, for each SAE: ``grad_accum`` micro-batches of FVU + auxk_coef * AuxK loss
(Gao et al. 2024) under autocast, then decoder-gradient projection, Adam (fused where the
device supports it), decoder renormalisation; the learning rate follows saekit.training.schedule.
A step's micro-batches are read first, so that its FVU divides by the total variance of all its
rows and b_dec starts at their mean: A micro-batches of B rows make the step of one batch of
A * B rows. AuxK divides by each micro-batch's residual variance (the residual depends on the
SAE, so the step's would need every micro-batch's forward first), averaged over the step.

Under torch.distributed (``ctx``, a saekit.distributed.DistributedContext) the same steps run
on a data x latent layout of ranks: latent-sharded SAEs, each data rank on its own batches
(saekit.training.parallel), losses whose averaged gradients are the global batch's
(saekit.distributed.losses), gradients averaged over the data group, dead-latent counts and
logged metrics reduced over it, per-shard checkpoints, output on rank 0 only, and a watchdog.
A step on D data ranks then equals a one-process step on the D batches concatenated.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from saekit.nn import DeadLatentTracker, fvu
from saekit.training import checkpoint as ckpt
from saekit.training.monitor import MetricsLog, Progress, Silent
from saekit.training.parallel import DataParallelSource, any_rank, is_sharded
from saekit.training.schedule import DECAYS, lr_at

# A rank stuck outside any collective is ended after this many times the collective timeout
# (its peers, waiting in a collective, fail first, after one timeout).
WATCHDOG_FACTOR = 2.0


@dataclass
class TrainConfig:
    """Trainer settings. ``lr=None`` picks Gao et al.'s scaling 2e-4 / sqrt(M / 2^14).
    ``autocast``: "auto" (bf16 on CUDA, off on CPU), "bf16", "fp16" or "none".
    ``checkpoint_every``: steps between checkpoints (0: only at the end and on interrupt)."""

    steps: int = 1000
    lr: float | None = None
    warmup_steps: int = 100
    decay: str = "cosine"
    decay_start: float = 0.8
    min_lr_frac: float = 0.0
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    fused_adam: bool = True
    grad_accum: int = 1
    auxk_coef: float = 1.0 / 32
    dead_threshold_tokens: int = 10_000_000
    autocast: str = "auto"
    init_b_dec: str = "mean"
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    loggers: tuple = ("jsonl",)
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("steps", "grad_accum", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)!r}")
        if self.decay not in DECAYS:
            raise ValueError(f"TrainConfig.decay must be one of {DECAYS}, got {self.decay!r}")
        if self.autocast not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"TrainConfig.autocast must be auto, bf16, fp16 or none, got {self.autocast!r}")
        if self.init_b_dec not in ("mean", "zero"):
            raise ValueError(f"TrainConfig.init_b_dec must be 'mean' or 'zero', got {self.init_b_dec!r}")
        self.adam_betas = tuple(self.adam_betas)
        self.loggers = tuple(self.loggers)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainRun:
    """One SAE being trained: the module, its Adam and its dead-latent counters."""

    sae: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tracker: DeadLatentTracker
    lr: float


@dataclass
class TrainResult:
    step: int
    tokens: int
    interrupted: bool
    checkpoint: Path | None
    metrics: dict


def default_lr(n_latents: int) -> float:
    """Gao et al. 2024's learning rate for M latents: 2e-4 / sqrt(M / 2^14)."""
    return 2e-4 / math.sqrt(n_latents / 2**14)


def make_adam(params, lr: float, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam, fused when asked for and the device supports it, else the foreach version."""
    if cfg.fused_adam and device.type in ("cuda", "cpu"):
        try:
            return torch.optim.Adam(params, lr=lr, betas=cfg.adam_betas, eps=cfg.adam_eps, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.Adam(params, lr=lr, betas=cfg.adam_betas, eps=cfg.adam_eps)


class _StopRequest:
    """Turns the first SIGINT / SIGTERM into a flag checked between steps (so the checkpoint
    holds a whole step); a second SIGINT interrupts at once. No-op outside the main thread."""

    def __init__(self):
        self.requested = None
        self._saved = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


class Trainer:
    """Train the SAEs of ``saes`` ({name: TopKSAE or GradientTopKSAE}) on ``source``.

    Every SAE sees the same batches; g-SAEs (``cfg.architecture == "gradient_topk"``) get the
    batch's gradients, TopK SAEs ignore them. ``out_dir`` receives ``metrics.jsonl`` and
    ``checkpoints/``. Call ``resume()`` to continue from the newest checkpoint there, then
    ``train()``.

    ``ctx``: a DistributedContext with a running process group (saekit.distributed.
    setup_distributed under torchrun); every rank then builds its Trainer with this rank's
    sharded SAEs (saekit.training.parallel.shard_saes) and the whole ``source`` (its data rank's
    share is read), and calls every method together. None (or a one-process context): one process.
    """

    def __init__(self, saes: dict, source, cfg: TrainConfig, out_dir, *, ctx=None):
        if not saes:
            raise ValueError("Trainer needs at least one SAE")
        for name, sae in saes.items():
            if sae.d_in != source.d_in:
                raise ValueError(f"SAE {name!r} has d_in = {sae.d_in} but the activations have d = {source.d_in}")
        self.ctx = ctx if ctx is not None and ctx.backend is not None else None
        group = None
        if self.ctx is not None:
            unsharded = [name for name, sae in saes.items() if not is_sharded(sae)]
            if unsharded:
                raise ValueError(f"SAE {unsharded[0]!r} is not sharded: under torch.distributed the trainer needs "
                                 "this rank's sharded SAEs (saekit.training.parallel.shard_saes)")
            group = self.ctx.data_group
            if self.ctx.layout.data > 1:
                source = DataParallelSource(source, self.ctx.data_rank, self.ctx.layout.data)
        self.cfg = cfg
        self.source = source
        self.out_dir = Path(out_dir)
        self.step = 0
        self.tokens = 0
        self.runs = {}
        for name, sae in saes.items():
            device = sae.W_enc.device
            lr = cfg.lr if cfg.lr is not None else default_lr(sae.n_latents)
            tracker = DeadLatentTracker(sae.n_latents, cfg.dead_threshold_tokens, process_group=group, device=device)
            self.runs[name] = TrainRun(sae, make_adam(sae.parameters(), lr, cfg, device), tracker, lr)
        self.device = next(iter(saes.values())).W_enc.device
        self._resumed_from = None

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs, progress and results (rank 0, or the only one)."""
        return self.ctx is None or self.ctx.is_main

    @property
    def data_world(self) -> int:
        """Data-parallel ranks: each step trains on this many batches per micro-batch."""
        return 1 if self.ctx is None else self.ctx.layout.data

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def resume(self, path=None) -> bool:
        """Restore the newest checkpoint under out_dir (or ``path``); False if there is none."""
        path = Path(path) if path is not None else ckpt.latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return False
        state = ckpt.load_checkpoint(path, self.runs, rank=0 if self.ctx is None else self.ctx.rank)
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.source.load_state_dict(state["data"])
        self._resumed_from = path
        return True

    def save_checkpoint(self) -> Path:
        state = {"tokens": self.tokens, "data": self.source.state_dict(), "train_config": self.cfg.to_dict()}
        if self.ctx is None:
            return ckpt.save_checkpoint(self.checkpoint_dir, self.step, self.runs, state,
                                        keep=self.cfg.keep_checkpoints)
        from saekit.training.sharded_checkpoint import save_sharded_checkpoint

        return save_sharded_checkpoint(self.checkpoint_dir, self.step, self.runs, state, self.ctx,
                                       keep=self.cfg.keep_checkpoints)

    def _autocast(self):
        mode = self.cfg.autocast
        if mode == "auto":
            mode = "bf16" if self.device.type == "cuda" else "none"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
        return torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def _mean_activation(self, x: torch.Tensor) -> torch.Tensor:
        """[d] mean of the rows x [N, d] (of every data rank's rows): b_dec's initial value."""
        if self.ctx is None:
            return x.float().mean(0)
        from saekit.distributed.metrics import row_mean_over_group

        return row_mean_over_group(x, self.ctx.data_group)

    def _step_variance(self, xs: list) -> torch.Tensor | None:
        """The total variance of the step's rows (every micro-batch, every data rank), for a step
        of several micro-batches; None for one (the FVU then computes it itself)."""
        if len(xs) == 1:
            return None
        from saekit.distributed.losses import global_total_variance

        group = None if self.ctx is None else self.ctx.data_group
        return global_total_variance(xs, group)

    def _losses(self, sae, x, out, with_aux: bool, total):
        """(FVU, AuxK) of this micro-batch: the FVU as its share of the step's (``total``: the
        step's total variance, or None for a one-micro-batch step), AuxK its own; under
        torch.distributed this rank's shares (their means over the data group are the global
        values)."""
        from saekit.distributed.losses import data_parallel_auxk, data_parallel_fvu, fvu_share

        group = None if self.ctx is None else self.ctx.data_group
        if total is not None:
            recon = fvu_share(x, out.x_hat, total, group)
        elif self.ctx is None:
            recon = fvu(x, out.x_hat)
        else:
            recon = data_parallel_fvu(x, out.x_hat, group)
        if not with_aux:
            return recon, recon.new_zeros(())
        if self.ctx is None:
            return recon, sae.auxk_loss(x, out)
        return recon, data_parallel_auxk(x - out.x_hat, sae.decode_without_bias(out.aux), group)

    def _count_firing(self, tracker, code) -> None:
        if self.ctx is None:
            tracker.update(code.indices, code.values)
            return
        from saekit.distributed.timeouts import guard

        with guard("all-reduce of dead-latent statistics", self.ctx.data_group):
            tracker.update(code.indices, code.values)

    def train_step(self) -> dict:
        """One optimizer step for every SAE; returns its metrics as float32 tensors (this rank's
        shares under torch.distributed: ``reduce_metrics`` gives the global values)."""
        cfg = self.cfg
        sums = {}
        dead = {name: run.tracker.dead for name, run in self.runs.items()}
        batches = []
        for _ in range(cfg.grad_accum):
            x, grad = self.source.next_batch()
            batches.append((x.to(self.device), grad.to(self.device) if grad is not None else None))
            self.tokens += x.shape[0] * self.data_world
        xs = [x for x, _ in batches]
        if self.step == 0 and cfg.init_b_dec == "mean":
            with torch.no_grad():
                mean = self._mean_activation(torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]))
                for run in self.runs.values():
                    run.sae.b_dec.copy_(mean)
        total = self._step_variance(xs)
        for x, grad in batches:
            for name, run in self.runs.items():
                sae = run.sae
                mask = dead[name] if bool(dead[name].any()) else None
                with self._autocast():
                    if sae.cfg.architecture == "gradient_topk":
                        out = sae(x, grad, dead=mask)
                    else:
                        out = sae(x, dead=mask)
                    # recon: this micro-batch's share of the step's FVU; aux averages over them.
                    recon, aux = self._losses(sae, x, out, mask is not None, total)
                    aux = aux / cfg.grad_accum
                    loss = recon + cfg.auxk_coef * aux
                loss.backward()
                self._count_firing(run.tracker, out.code)
                for key, value in (("loss", loss), ("fvu", recon), ("auxk", aux),
                                   ("l0", out.code.l0.mean() / cfg.grad_accum)):
                    sums[f"{name}/{key}"] = sums.get(f"{name}/{key}", 0.0) + value.detach().float()
        for name, run in self.runs.items():
            lr = lr_at(self.step, lr=run.lr, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps,
                       decay=cfg.decay, decay_start=cfg.decay_start, min_lr_frac=cfg.min_lr_frac)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            if self.ctx is not None:
                from saekit.distributed.metrics import all_reduce_gradients

                all_reduce_gradients(run.sae, self.ctx.data_group)
            run.sae.remove_parallel_gradient_()
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.sae.normalize_decoder_()
            sums[f"{name}/lr"] = torch.tensor(lr)
            sums[f"{name}/dead"] = run.tracker.dead.float().mean()
        self.step += 1
        return sums

    def reduce_metrics(self, metrics: dict) -> dict:
        """train_step's metrics -> the global batch's (a collective under torch.distributed)."""
        if self.ctx is None:
            return metrics
        from saekit.distributed.metrics import reduce_metrics

        return reduce_metrics(metrics, self.ctx.data_group)

    def _stop_requested(self, stop: _StopRequest) -> bool:
        """Whether to stop now: this process got a signal, or (distributed) any rank did."""
        if self.ctx is None:
            return stop.requested is not None
        return any_rank(stop.requested is not None, self.ctx, self.device)

    def _watchdog(self):
        if self.ctx is None:
            return contextlib.nullcontext()
        from saekit.distributed.timeouts import Watchdog

        return Watchdog(WATCHDOG_FACTOR * self.ctx.timeout_s, name="training step")

    def train(self, *, stream=None) -> TrainResult:
        """Run until ``cfg.steps``; on SIGINT / SIGTERM write a checkpoint and return early
        (``interrupted=True``). A checkpoint is always written at the end."""
        cfg = self.cfg
        if self.is_main:
            log = MetricsLog(self.out_dir, loggers=cfg.loggers, config=cfg.to_dict(),
                             resume_step=self.step if self._resumed_from is not None else None)
            progress = Progress(cfg.steps, self.step, desc="train", bar=cfg.progress, stream=stream)
        else:
            log = progress = Silent()
        last, path = {}, None
        try:
            with self._watchdog() as watchdog:
                with _StopRequest() as stop:
                    while self.step < cfg.steps and not self._stop_requested(stop):
                        tokens_before = self.tokens
                        metrics = self.train_step()
                        if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                            last = {k: float(v) for k, v in self.reduce_metrics(metrics).items()}
                            last["tokens"] = self.tokens
                            log.log(self.step, last)
                            shown = {k.replace("gradient_topk", "g").replace("/", " "): v for k, v in last.items()
                                     if k.endswith(("/fvu", "/l0", "/dead"))}
                            progress.update(1, self.tokens - tokens_before, shown)
                        else:
                            progress.update(1, self.tokens - tokens_before)
                        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                            path = self.save_checkpoint()
                        if watchdog is not None:
                            watchdog.beat()
                    stopped = self._stop_requested(stop)
                path = self.save_checkpoint()
        finally:
            progress.close()
            log.close()
        return TrainResult(self.step, self.tokens, stopped, path, last)
