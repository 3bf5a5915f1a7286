"""The toy model of superposition and the TopK vs g-SAE experiment run on it (``saekit train``
with no model)."""

from saekit.toy.model import ToyConfig, ToyModel, load_toy_model, save_toy_model, train_toy_model
from saekit.toy.source import ToySource, toy_activations

__all__ = ["ToyConfig", "ToyModel", "train_toy_model", "save_toy_model", "load_toy_model",
           "ToySource", "toy_activations"]
