"""The three operators of SPEC with their backends: ``topk_encode``, ``gradient_topk_encode``
and ``sparse_decode``. ``saekit.ops.dispatch`` picks the backend for each call."""

from saekit._extension import COMPILED_OPS
from saekit.ops.gradient_topk_encode import gradient_topk_encode
from saekit.ops.sparse_decode import sparse_decode
from saekit.ops.topk_encode import TopKAuxOutput, TopKOutput, topk_encode

# Every custom op of torch.ops.saekit, forward and backward (tests loop over these).
OPS = COMPILED_OPS

__all__ = [
    "topk_encode",
    "gradient_topk_encode",
    "sparse_decode",
    "TopKOutput",
    "TopKAuxOutput",
    "OPS",
]
