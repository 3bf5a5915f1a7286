"""Learning-rate schedule: linear warm-up, then a constant phase and a decay to a floor.

The rate is a pure function of the step, so resuming needs only the step number.
"""

from __future__ import annotations

import math

DECAYS = ("cosine", "linear", "constant")


def lr_at(step: int, *, lr: float, total_steps: int, warmup_steps: int = 0, decay: str = "cosine",
          decay_start: float = 0.8, min_lr_frac: float = 0.0) -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    - steps [0, warmup_steps): linear ramp from lr / warmup_steps to lr;
    - then lr until ``decay_start * total_steps``;
    - then ``decay`` ("cosine", "linear" or "constant") down to ``min_lr_frac * lr`` at
      ``total_steps``. Gao et al. 2024 decay over the last 20% of training, the default here.
    """
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    start = max(int(decay_start * total_steps), warmup_steps)
    if decay == "constant" or step < start or total_steps <= start:
        return lr
    progress = min(1.0, (step - start) / (total_steps - start))
    floor = min_lr_frac * lr
    if decay == "linear":
        return floor + (lr - floor) * (1.0 - progress)
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
