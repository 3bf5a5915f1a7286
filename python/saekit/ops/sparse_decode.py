"""Sparse decode (SPEC section 3): public entry point, fake implementations and autograd."""

from __future__ import annotations

import torch

from saekit.ops import dispatch, reference
from saekit.ops.autograd import sparse_decode_autograd
from saekit.ops.validation import check_sparse_code, checked_indices


def sparse_decode(values, indices, W_dec, b_dec, *, backend="auto"):
    """Reconstruction from a sparse code: x_hat[n] = sum_j values[n, j] W_dec[indices[n, j]] + b_dec.

    Args:
        values: [N, k] floating. indices: [N, k] int64 in [0, M); repeated indices add up.
        W_dec: [M, d] decoder, one row per latent. b_dec: [d]. Same dtype as values.
        backend: "auto", "reference", "cpu", "cuda" or "triton".

    Returns:
        x_hat [N, d] in the dtype of values. Gradients flow into values, W_dec and b_dec; the
        compiled backends read only the k selected rows per token (O(N * k * d) work), and
        accumulate the W_dec gradient in float32, grouped by latent (deterministic; the triton
        backend adds into float32 with atomics, so its last bits may vary between runs).

    Raises:
        ValueError for an index outside [0, M), before any row is read (one host sync).
    """
    return decode_rows(values, indices, W_dec, b_dec, backend=backend, check_indices=True)


def decode_rows(values, indices, W_dec, b_dec, *, backend="auto", check_indices=True):
    """``sparse_decode``, whose index range check can be skipped (``check_indices=False``) for
    indices that saekit's own encoder just selected: no host sync then. Other checks remain."""
    check_sparse_code(values, indices, W_dec, b_dec)
    name = dispatch.choose("sparse_decode", backend, values.device, values.dtype)
    if name == "reference":
        if check_indices:
            indices = checked_indices(indices, W_dec.shape[0])
        return reference.sparse_decode(values, indices, W_dec, b_dec)
    if name == "triton":
        from saekit.triton import sparse_decode as triton_sparse_decode

        return triton_sparse_decode.sparse_decode(values, indices, W_dec, b_dec, check_indices)
    return torch.ops.saekit.sparse_decode(values, indices, W_dec, b_dec, check_indices)


@torch.library.register_fake("saekit::sparse_decode")
def _sparse_decode_fake(values, indices, W_dec, b_dec, check_indices=True):
    return values.new_empty(values.shape[0], W_dec.shape[1])


@torch.library.register_fake("saekit::sparse_decode_backward")
def _sparse_decode_backward_fake(grad_out, values, indices, W_dec, check_indices=True):
    return values.new_empty(values.shape), W_dec.new_empty(W_dec.shape), W_dec.new_empty(W_dec.shape[1])


_backward, _setup_context = sparse_decode_autograd(torch.ops.saekit.sparse_decode_backward)
torch.library.register_autograd("saekit::sparse_decode", _backward, setup_context=_setup_context)
