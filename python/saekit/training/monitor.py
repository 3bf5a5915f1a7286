"""Where training metrics go: a progress bar, a JSONL file, and wandb or tensorboard on request."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

LOGGERS = ("jsonl", "wandb", "tensorboard")


class MetricsLog:
    """Appends one JSON object per logged step to ``<out>/metrics.jsonl`` and forwards the same
    scalars to wandb / tensorboard when asked for (ValueError if asked for and not installed).

    On resume from step s, lines for steps after s (written after that checkpoint) are dropped
    first, so the file holds each step once.
    """

    def __init__(self, out_dir, *, loggers=("jsonl",), resume_step: int | None = None, run_name: str = "saekit",
                 config: dict | None = None):
        unknown = [name for name in loggers if name not in LOGGERS]
        if unknown:
            raise ValueError(f"unknown logger {unknown[0]!r}; choose from {', '.join(LOGGERS)}")
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._file = open(self.path, "a")
        self._wandb = self._tensorboard = None
        if "wandb" in loggers:
            try:
                import wandb
            except ImportError:
                raise ValueError("--log wandb needs the wandb package (pip install wandb)") from None
            self._wandb = wandb.init(project="saekit", name=run_name, config=config or {}, resume="allow")
        if "tensorboard" in loggers:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("--log tensorboard needs the tensorboard package (pip install tensorboard)") from None
            self._tensorboard = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def log(self, step: int, metrics: dict) -> None:
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)
        if self._tensorboard is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._tensorboard is not None:
            self._tensorboard.close()


def read_metrics(out_dir) -> list[dict]:
    """The records of ``<out>/metrics.jsonl``, in order."""
    path = Path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class Progress:
    """A progress bar over optimizer steps showing tokens/s and the latest metrics: tqdm when
    installed, ``bar`` is set and the stream is a terminal; else a plain line at every tenth
    of the run (and at the end), which keeps CI logs short."""

    def __init__(self, total: int, initial: int = 0, *, desc: str = "train", bar: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.step = total, initial
        self._t0, self._tokens0 = time.perf_counter(), 0
        self._tokens = 0
        self._tqdm = None
        if bar and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._tqdm = tqdm(total=total, initial=initial, desc=desc, file=self.stream,
                                  dynamic_ncols=True, mininterval=0.5)
        self.desc = desc

    def update(self, steps: int, tokens: int, metrics: dict | None = None) -> None:
        self.step += steps
        self._tokens += tokens
        rate = self._tokens / max(time.perf_counter() - self._t0, 1e-9)
        shown = {"tok/s": f"{rate:,.0f}"}
        for key, value in (metrics or {}).items():
            shown[key] = f"{value:.4g}" if isinstance(value, float) else str(value)
        if self._tqdm is not None:
            self._tqdm.update(steps)
            if metrics is not None:
                self._tqdm.set_postfix(shown, refresh=False)
        elif metrics is not None and (self.step % max(1, self.total // 10) == 0 or self.step == self.total):
            text = " ".join(f"{k}={v}" for k, v in shown.items())
            print(f"{self.desc} step {self.step}/{self.total} {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


class Silent:
    """Stands in for MetricsLog and Progress on the ranks that do not write (all but rank 0)."""

    def log(self, step: int, metrics: dict) -> None:
        pass

    def update(self, steps: int, tokens: int, metrics: dict | None = None) -> None:
        pass

    def close(self) -> None:
        pass
