"""Training SAEs: activation sources, the trainer, checkpoints, the LR schedule and logging."""

from saekit.training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from saekit.training.schedule import lr_at
from saekit.training.source import ActivationBatch, ActivationSource
from saekit.training.trainer import TrainConfig, Trainer, TrainResult, TrainRun, default_lr

__all__ = ["ActivationBatch", "ActivationSource", "Trainer", "TrainConfig", "TrainResult", "TrainRun",
           "default_lr", "lr_at", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "CheckpointError"]
