"""The SAE trainer: one activation stream feeding one or more SAEs (e.g. TopK and g-SAE side
by side on the same tokens), with everything needed to stop and resume exactly.

Per optimizer step, for each SAE: ``grad_accum`` micro-batches of FVU + auxk_coef * AuxK loss
(Gao et al. 2024) under autocast, then decoder-gradient projection, Adam (fused where the
device supports it), decoder renormalisation; the learning rate follows saekit.training.schedule.
"""

from __future__ import annotations

import math
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from saekit.nn import DeadLatentTracker, GradientTopKSAE, fvu
from saekit.training import checkpoint as ckpt
from saekit.training.monitor import MetricsLog, Progress
from saekit.training.schedule import DECAYS, lr_at


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

    Every SAE sees the same batches; g-SAEs get the batch's gradients, TopK SAEs ignore them.
    ``out_dir`` receives ``metrics.jsonl`` and ``checkpoints/``. Call ``resume()`` to continue
    from the newest checkpoint there, then ``train()``.
    """

    def __init__(self, saes: dict, source, cfg: TrainConfig, out_dir):
        if not saes:
            raise ValueError("Trainer needs at least one SAE")
        for name, sae in saes.items():
            if sae.d_in != source.d_in:
                raise ValueError(f"SAE {name!r} has d_in = {sae.d_in} but the activations have d = {source.d_in}")
        self.cfg = cfg
        self.source = source
        self.out_dir = Path(out_dir)
        self.step = 0
        self.tokens = 0
        self.runs = {}
        for name, sae in saes.items():
            device = sae.W_enc.device
            lr = cfg.lr if cfg.lr is not None else default_lr(sae.n_latents)
            self.runs[name] = TrainRun(sae, make_adam(sae.parameters(), lr, cfg, device),
                                       DeadLatentTracker(sae.n_latents, cfg.dead_threshold_tokens, device=device),
                                       lr)
        self.device = next(iter(saes.values())).W_enc.device
        self._resumed_from = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def resume(self, path=None) -> bool:
        """Restore the newest checkpoint under out_dir (or ``path``); False if there is none."""
        path = Path(path) if path is not None else ckpt.latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return False
        state = ckpt.load_checkpoint(path, self.runs)
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.source.load_state_dict(state["data"])
        self._resumed_from = path
        return True

    def save_checkpoint(self) -> Path:
        state = {"tokens": self.tokens, "data": self.source.state_dict(), "train_config": self.cfg.to_dict()}
        return ckpt.save_checkpoint(self.checkpoint_dir, self.step, self.runs, state, keep=self.cfg.keep_checkpoints)

    def _autocast(self):
        mode = self.cfg.autocast
        if mode == "auto":
            mode = "bf16" if self.device.type == "cuda" else "none"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
        return torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def train_step(self) -> dict:
        """One optimizer step for every SAE; returns its metrics as float32 tensors."""
        cfg = self.cfg
        sums = {}
        dead = {name: run.tracker.dead for name, run in self.runs.items()}
        for micro in range(cfg.grad_accum):
            x, grad = self.source.next_batch()
            x = x.to(self.device)
            grad = grad.to(self.device) if grad is not None else None
            self.tokens += x.shape[0]
            if self.step == 0 and micro == 0 and cfg.init_b_dec == "mean":
                with torch.no_grad():
                    for run in self.runs.values():
                        run.sae.b_dec.copy_(x.float().mean(0))
            for name, run in self.runs.items():
                sae = run.sae
                mask = dead[name] if bool(dead[name].any()) else None
                with self._autocast():
                    if isinstance(sae, GradientTopKSAE):
                        out = sae(x, grad, dead=mask)
                    else:
                        out = sae(x, dead=mask)
                    recon = fvu(x, out.x_hat)
                    aux = sae.auxk_loss(x, out) if mask is not None else recon.new_zeros(())
                    loss = recon + cfg.auxk_coef * aux
                (loss / cfg.grad_accum).backward()
                run.tracker.update(out.code.indices, out.code.values)
                for key, value in (("loss", loss), ("fvu", recon), ("auxk", aux), ("l0", out.code.l0.mean())):
                    sums[f"{name}/{key}"] = sums.get(f"{name}/{key}", 0.0) + value.detach().float() / cfg.grad_accum
        for name, run in self.runs.items():
            lr = lr_at(self.step, lr=run.lr, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps,
                       decay=cfg.decay, decay_start=cfg.decay_start, min_lr_frac=cfg.min_lr_frac)
            for group in run.optimizer.param_groups:
                group["lr"] = lr
            run.sae.remove_parallel_gradient_()
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.sae.normalize_decoder_()
            sums[f"{name}/lr"] = torch.tensor(lr)
            sums[f"{name}/dead"] = run.tracker.dead.float().mean()
        self.step += 1
        return sums

    def train(self, *, stream=None) -> TrainResult:
        """Run until ``cfg.steps``; on SIGINT / SIGTERM write a checkpoint and return early
        (``interrupted=True``). A checkpoint is always written at the end."""
        cfg = self.cfg
        log = MetricsLog(self.out_dir, loggers=cfg.loggers, config=cfg.to_dict(),
                         resume_step=self.step if self._resumed_from is not None else None)
        progress = Progress(cfg.steps, self.step, desc="train", bar=cfg.progress, stream=stream)
        last, path, stopped = {}, None, None
        try:
            with _StopRequest() as stop:
                while self.step < cfg.steps and stop.requested is None:
                    tokens_before = self.tokens
                    metrics = self.train_step()
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        last = {k: float(v) for k, v in metrics.items()}
                        last["tokens"] = self.tokens
                        log.log(self.step, last)
                        shown = {k.replace("gradient_topk", "g").replace("/", " "): v for k, v in last.items()
                                 if k.endswith(("/fvu", "/l0", "/dead"))}
                        progress.update(1, self.tokens - tokens_before, shown)
                    else:
                        progress.update(1, self.tokens - tokens_before)
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                        path = self.save_checkpoint()
                stopped = stop.requested
            path = self.save_checkpoint()
        finally:
            progress.close()
            log.close()
        return TrainResult(self.step, self.tokens, stopped is not None, path, last)
