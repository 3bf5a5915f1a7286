"""The toy model of superposition (Elhage et al. 2022, "Toy Models of Superposition").

F sparse ground-truth features are compressed into m < F hidden dimensions by a linear map
and read back by a ReLU:

    h  = x @ W.T                 # [N, m], W [m, F]: column i is feature i's direction
    x' = relu(h @ W + b)         # [N, F]
    loss = sum_i importance_i * (x_i - x'_i)^2, summed over features, mean over rows

Trained on sparse data it stores more features than dimensions, in superposition. An SAE on
h should recover W's columns; the model's own loss supplies g-SAE gradients with respect to h.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class ToyConfig:
    """n_features F, n_hidden m, feature_prob: chance each feature is active in a row (values
    then uniform in [0, 1]), importance_decay: importance_i = decay ** i."""

    n_features: int = 64
    n_hidden: int = 16
    feature_prob: float = 0.04
    importance_decay: float = 0.98

    def __post_init__(self):
        if not 1 <= self.n_hidden <= self.n_features:
            raise ValueError(f"need 1 <= n_hidden <= n_features, got {self.n_hidden} and {self.n_features}")
        if not 0.0 < self.feature_prob <= 1.0:
            raise ValueError(f"feature_prob must be in (0, 1], got {self.feature_prob}")

    def to_dict(self) -> dict:
        return asdict(self)


class ToyModel(nn.Module):
    """The ReLU output model of Elhage et al. with a hook point ``hidden`` (an nn.Identity on h),
    so that hook-based tools see it like any other model."""

    def __init__(self, cfg: ToyConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.W = nn.Parameter(torch.empty(cfg.n_hidden, cfg.n_features))
        nn.init.xavier_normal_(self.W, generator=generator)
        self.b = nn.Parameter(torch.zeros(cfg.n_features))
        self.hidden = nn.Identity()
        self.register_buffer("importance", cfg.importance_decay ** torch.arange(cfg.n_features, dtype=torch.float32))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n rows of sparse features: [n, F], each entry active with prob feature_prob."""
        F = self.cfg.n_features
        active = torch.rand(n, F, generator=generator) < self.cfg.feature_prob
        return torch.rand(n, F, generator=generator) * active

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, F] -> h [N, m]."""
        return self.hidden(x @ self.W.T)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """h [N, m] -> x' [N, F]."""
        return torch.relu(h @ self.W + self.b)

    def loss_per_row(self, x: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
        """[N] importance-weighted squared error of each row."""
        return ((x - x_out).pow(2) * self.importance).sum(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, F] -> x' [N, F]."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def feature_directions(self) -> torch.Tensor:
        """[F, m] unit-norm direction of each feature in h (rows of W.T)."""
        return torch.nn.functional.normalize(self.W.T, dim=1)

    @torch.no_grad()
    def represented(self, threshold: float = 0.5) -> torch.Tensor:
        """[F] bool: features the model stores (||W[:, i]|| above ``threshold``)."""
        return self.W.norm(dim=0) > threshold


def train_toy_model(cfg: ToyConfig, *, steps: int = 1500, batch_size: int = 1024, lr: float = 1e-2,
                    seed: int = 0) -> ToyModel:
    """Train a ToyModel with Adam on its own sparse data; deterministic given ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    model = ToyModel(cfg, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, 2.0 * (1.0 - step / steps))
        x = model.sample(batch_size, gen)
        loss = model.loss_per_row(x, model(x)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


def save_toy_model(model: ToyModel, path) -> None:
    """``toy_model.safetensors`` + ``toy_model.json`` in directory ``path``."""
    import json
    import os
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({"W": model.W.detach().contiguous(), "b": model.b.detach().contiguous()},
              str(path / "toy_model.safetensors.tmp"))
    (path / "toy_model.json.tmp").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    os.replace(path / "toy_model.safetensors.tmp", path / "toy_model.safetensors")
    os.replace(path / "toy_model.json.tmp", path / "toy_model.json")


def load_toy_model(path) -> ToyModel:
    """Load a model written by save_toy_model (ValueError naming the file if it is bad)."""
    import json
    from pathlib import Path

    from saekit.io import read_tensors

    path = Path(path)
    try:
        cfg = ToyConfig(**json.loads((path / "toy_model.json").read_text()))
    except (OSError, TypeError, ValueError) as e:
        raise ValueError(f"{path / 'toy_model.json'}: not a toy model config ({e})") from None
    tensors = read_tensors(path / "toy_model.safetensors",
                           {"W": (cfg.n_hidden, cfg.n_features), "b": (cfg.n_features,)})
    model = ToyModel(cfg)
    with torch.no_grad():
        model.W.copy_(tensors["W"])
        model.b.copy_(tensors["b"])
    return model.eval().requires_grad_(False)
