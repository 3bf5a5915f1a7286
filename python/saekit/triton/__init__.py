"""Triton backend of saekit's ops: fused TopK / g-SAE encode, sparse decode and their backward.

``saekit.ops`` imports these modules lazily, only when the "triton" backend is chosen. Triton
fixes its mode when a kernel is defined: to run on CPU tensors, set ``TRITON_INTERPRET=1``
before the first import of ``saekit.triton`` (``saekit.ops.dispatch`` checks both).

Custom ops live in the ``saekit_triton`` namespace (``torch.ops.saekit_triton.*``), each with a
fake implementation and autograd, so ``torch.compile`` traces through them.
"""

from __future__ import annotations

import contextlib

import torch
import triton

from saekit.ops.dispatch import TRITON_MAX_K

# Whether the kernels below were defined for Triton's CPU interpreter.
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

# The largest k (and k_aux) the fused encoder keeps per row: its per-row buffer of packed keys
# is next_pow2(k) wide and lives in registers.
MAX_K = TRITON_MAX_K

# Every custom op of torch.ops.saekit_triton, forward and backward (tests loop over these).
OPS = (
    "topk_encode",
    "gradient_topk_encode",
    "topk_encode_backward",
    "sparse_decode",
    "sparse_decode_backward",
)


def on_device_of(t: torch.Tensor):
    """Context that makes t's CUDA device the current one (a no-op for CPU tensors): Triton
    launches on the current device and its current stream, whatever device the tensors are on."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
