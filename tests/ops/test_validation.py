"""SPEC section 4: every bad input raises ValueError/TypeError naming the argument, in every
backend, both through saekit.ops and through torch.ops.saekit directly."""

import pytest
import torch

from saekit.ops import gradient_topk_encode, sparse_decode, topk_encode

BACKENDS = ("reference", "cpu")
N, d, M, k = 4, 3, 6, 2


def _enc():
    return dict(x=torch.randn(N, d), W_enc=torch.randn(M, d), b_enc=torch.randn(M), b_dec=torch.randn(d), k=k)


def _gsae():
    return dict(_enc(), grad=torch.randn(N, d), W_dec=torch.randn(M, d))


def _dec():
    return dict(values=torch.rand(N, k), indices=torch.randint(0, M, (N, k)), W_dec=torch.randn(M, d), b_dec=torch.randn(d))


ENCODE_CASES = [
    ("x", torch.randn(N, d + 1), ValueError, "W_enc must have shape"),
    ("x", torch.randn(N), ValueError, "x must have shape"),
    ("x", torch.randint(0, 3, (N, d)), TypeError, "x must be a floating tensor"),
    ("W_enc", torch.randn(M, d + 1), ValueError, "W_enc must have shape"),
    ("b_enc", torch.randn(M + 1), ValueError, "b_enc must have shape"),
    ("b_dec", torch.randn(d + 2), ValueError, "b_dec must have shape"),
    ("W_enc", torch.randn(M, d, dtype=torch.float16), TypeError, "W_enc must have the dtype of x"),
    ("b_enc", torch.randn(M, device="meta"), ValueError, "b_enc must be on the device of x"),
    ("k", 0, ValueError, r"k must lie in \[1, M\]"),
    ("k", M + 1, ValueError, r"k must lie in \[1, M\]"),
    ("k", 2.0, TypeError, "k must be an int"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arg,value,exc,match", ENCODE_CASES, ids=lambda v: v if isinstance(v, str) else None)
def test_encoders_reject(backend, arg, value, exc, match):
    with pytest.raises(exc, match=match):
        topk_encode(**dict(_enc(), **{arg: value}), backend=backend)
    with pytest.raises(exc, match=match):
        gradient_topk_encode(**dict(_gsae(), **{arg: value}), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(dead=torch.zeros(M, dtype=torch.bool)), ValueError, "k_aux is required"),
    (dict(k_aux=2), ValueError, "dead is None"),
    (dict(dead=torch.zeros(M), k_aux=1), TypeError, "dead must be a bool"),
    (dict(dead=torch.zeros(M + 1, dtype=torch.bool), k_aux=1), ValueError, "dead must have shape"),
    (dict(dead=torch.zeros(M, dtype=torch.bool), k_aux=-1), ValueError, "k_aux must lie"),
    (dict(dead=torch.tensor([True, False] * 3), k_aux=4), ValueError, r"k_aux must lie in \[0, dead.sum\(\)\]"),
])
def test_auxk_arguments(backend, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        topk_encode(**_enc(), **kwargs, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(beta=float("nan")), ValueError, "beta must be finite"),
    (dict(beta=float("inf")), ValueError, "beta must be finite"),
    (dict(beta="1"), TypeError, "beta must be a float"),
    (dict(grad_norm="l1"), ValueError, "grad_norm must be one of"),
    (dict(grad=torch.randn(N, d + 1)), ValueError, "grad must have shape"),
    (dict(grad=torch.ones(N, d, dtype=torch.int32)), TypeError, "grad must be a floating tensor"),
    (dict(W_dec=torch.randn(M + 1, d)), ValueError, "W_dec must have shape"),
    (dict(W_dec=torch.randn(M, d, dtype=torch.bfloat16)), TypeError, "W_dec must have the dtype of x"),
])
def test_gradient_topk_arguments(backend, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        gradient_topk_encode(**dict(_gsae(), **kwargs), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arg,value,exc,match", [
    ("indices", torch.randint(0, M, (N, k), dtype=torch.int32), TypeError, "indices must be an int64"),
    ("indices", torch.randint(0, M, (N, k + 1)), ValueError, "indices must have shape"),
    ("values", torch.rand(N), ValueError, "values must have shape"),
    ("values", torch.ones(N, k, dtype=torch.int64), TypeError, "values must be a floating tensor"),
    ("W_dec", torch.randn(M, d, dtype=torch.float16), TypeError, "W_dec must have the dtype of values"),
    ("b_dec", torch.randn(d + 1), ValueError, "b_dec must have shape"),
    ("indices", torch.full((N, k), M), ValueError, r"indices must lie in \[0, M\)"),
    ("indices", torch.full((N, k), -3), ValueError, r"indices must lie in \[0, M\)"),
])
def test_sparse_decode_rejects(backend, arg, value, exc, match):
    with pytest.raises(exc, match=match):
        sparse_decode(**dict(_dec(), **{arg: value}), backend=backend)


def test_unknown_or_unavailable_backend():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        topk_encode(**_enc(), backend="fast")
    with pytest.raises(ValueError, match="backend='cuda' cannot run saekit.ops.topk_encode"):
        topk_encode(**_enc(), backend="cuda")


@pytest.mark.parametrize("call,exc,match", [
    (lambda: torch.ops.saekit.topk_encode(torch.randn(N, d), torch.randn(M, d), torch.randn(M), torch.randn(d), M + 1, None, 0), ValueError, "k must lie"),
    (lambda: torch.ops.saekit.topk_encode(torch.randn(N, d), torch.randn(M, d + 1), torch.randn(M), torch.randn(d), k, None, 0), ValueError, "W_enc.shape"),
    (lambda: torch.ops.saekit.topk_encode(torch.randn(N, d), torch.randn(M, d).half(), torch.randn(M), torch.randn(d), k, None, 0), TypeError, "same dtype"),
    (lambda: torch.ops.saekit.topk_encode(torch.randn(N, d), torch.randn(M, d), torch.randn(M), torch.randn(d), k, torch.ones(M, dtype=torch.bool), M + 1), ValueError, "k_aux must lie"),
    (lambda: torch.ops.saekit.gradient_topk_encode(torch.randn(N, d), torch.randn(N, d), torch.randn(M, d), torch.randn(M), torch.randn(M, d), torch.randn(d), k, float("nan")), ValueError, "beta must be finite"),
    (lambda: torch.ops.saekit.topk_encode_backward(torch.randn(N, k), torch.randn(N, k), torch.full((N, k), M), torch.randn(N, d), torch.randn(M, d), torch.randn(d)), ValueError, "indices must lie"),
    (lambda: torch.ops.saekit.topk_encode_backward(torch.randn(N, k), torch.randn(N, k), torch.zeros(N, k, dtype=torch.int64), torch.randn(N, d), torch.randn(M, d), torch.randn(1)), ValueError, r"b_dec.shape\[0\] must equal"),
    (lambda: torch.ops.saekit.topk_encode_backward(torch.randn(N, k), torch.randn(N, k), torch.zeros(N, k, dtype=torch.int64), torch.randn(N, d), torch.randn(M, d), torch.randn(N, d)), ValueError, "b_dec must have shape"),
])
def test_compiled_ops_check_their_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_is_valid(backend):
    enc = dict(_enc(), x=torch.randn(0, d))
    out = topk_encode(**enc, backend=backend)
    assert out.values.shape == (0, k) and out.indices.shape == (0, k)
    out = gradient_topk_encode(**dict(_gsae(), x=torch.randn(0, d), grad=torch.randn(0, d)), backend=backend)
    assert out.values.shape == (0, k)
    x_hat = sparse_decode(torch.rand(0, k), torch.zeros(0, k, dtype=torch.int64), torch.randn(M, d), torch.randn(d), backend=backend)
    assert x_hat.shape == (0, d)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [-1, M])
def test_sparse_decode_checks_indices_under_torch_compile(backend, bad):
    """The eager check is skipped while tracing; the graph must still refuse the index (index -1
    would otherwise read W_dec[M - 1] in the reference's compiled gather)."""
    torch._dynamo.reset()
    decode = torch.compile(lambda v, i, W, b: sparse_decode(v, i, W, b, backend=backend), fullgraph=True)
    args = _dec()
    args["indices"][1, 1] = bad
    with pytest.raises(ValueError, match=r"indices must lie in \[0, M\)"):
        decode(*args.values())
