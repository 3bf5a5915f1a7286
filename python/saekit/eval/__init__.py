"""Evaluating SAEs: reconstruction and sparsity metrics, and the downstream effect of splicing
an SAE into the model it was trained on."""

from saekit.eval.metrics import ReconstructionMetrics, downstream_summary, mean_max_cosine
from saekit.eval.report import format_table

__all__ = ["ReconstructionMetrics", "downstream_summary", "mean_max_cosine", "format_table"]
