"""saekit: TopK and gradient-TopK sparse autoencoder kernels for PyTorch.

``saekit.ops`` holds the three operators of SPEC (TopK encode, gradient-TopK encode, sparse
decode), each with a pure-torch reference backend and compiled kernels chosen per call.
"""

from saekit import _extension  # noqa: F401  (loads saekit._C, registers torch.ops.saekit)
from saekit import ops
from saekit.ops import gradient_topk_encode, sparse_decode, topk_encode

__version__ = "0.1.0"

__all__ = ["ops", "topk_encode", "gradient_topk_encode", "sparse_decode", "__version__"]
