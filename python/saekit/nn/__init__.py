"""Drop-in layers: TopK / GradientTopK / BatchTopK activations, SparseDecoder, TopKSAE and
GradientTopKSAE, plus the training helpers every SAE trainer needs."""

from saekit.nn.activations import GradientTopK, TopK
from saekit.nn.batch_topk import BatchTopK
from saekit.nn.dead_latents import DeadLatentTracker
from saekit.nn.decoder import SparseDecoder, decode
from saekit.nn.decoder_norm import normalize_rows_, remove_parallel_gradient_
from saekit.nn.metrics import auxk_loss, fvu, normalized_mse
from saekit.nn.sae import ARCHITECTURES, GradientTopKSAE, SAEConfig, TopKSAE
from saekit.nn.sparse_code import SAEOutput, SparseCode

__all__ = [
    "TopK", "GradientTopK", "BatchTopK", "SparseDecoder", "decode", "TopKSAE", "GradientTopKSAE",
    "SAEConfig", "ARCHITECTURES", "SparseCode", "SAEOutput", "DeadLatentTracker",
    "normalize_rows_", "remove_parallel_gradient_", "auxk_loss", "fvu", "normalized_mse",
]
