"""The triton backend against the reference: selections equal, values and gradients within the
rule of tests/ops/cases.py. Without a GPU the kernels run in Triton's interpreter (see
conftest.py), which executes programs one after another: shapes stay small, yet cover several
latent tiles, latent splits, partial row blocks, k = M, N = 0 and every dtype."""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")
from saekit.ops import dispatch

from tests.ops.cases import interpreter_expected

_REASON = dispatch.supports("triton", "topk_encode", torch.device("cpu"))
if _REASON is not None and not torch.cuda.is_available():
    if interpreter_expected():
        raise RuntimeError(f"SAEKIT_EXPECT_TRITON_INTERPRETER=1 but {_REASON}")
    pytest.skip(_REASON, allow_module_level=True)

import saekit
import saekit.triton.sparse_decode  # registers torch.ops.saekit_triton.*
import saekit.triton.topk_encode
import triton
import triton.language as tl
from saekit.ops import gradient_topk_encode, reference, sparse_decode, topk_encode
from saekit.triton import OPS, interpreter_topk
from saekit.triton.keys import score_keys

from tests.ops.cases import (
    DTYPES,
    assert_close_to_oracle,
    encoder_inputs,
    grads,
    grid,
    leaves,
    shape_id,
)

# (N, d, M, k): tiny; k = M; k = 1; N = 0; several tiles and splits with a partial row block;
# more rows than one block (64 in the interpreter) and k just below a power of two.
SHAPES = [(33, 16, 40, 5), (7, 8, 13, 13), (5, 4, 9, 1), (0, 8, 16, 4), (19, 12, 600, 17), (70, 8, 50, 31)]


def _to(device, *tensors):
    return [t.to(device) for t in tensors]


def _grad_inputs(N, d, M, dtype, seed, device):
    g = torch.Generator().manual_seed(seed + 100)
    return grid((N, d), g).to(device, dtype), grid((M, d), g).to(device, dtype)


def _check_grads(mine, ref, ref64, outs, upstream):
    """outs: (mine, ref, ref64) outputs lists; upstream: list of tensors."""
    for name, a, b, c in zip(("dx", "dW_enc", "db_enc", "db_dec"), grads(outs[0], mine, upstream),
                             grads(outs[1], ref, upstream), grads(outs[2], ref64, upstream)):
        assert a.dtype == mine[0].dtype
        assert_close_to_oracle(a.cpu(), b.cpu(), c.cpu(), name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_topk_encode_matches_reference(device, dtype, shape):
    N, d, M, k = shape
    inputs = encoder_inputs(N, d, M, dtype, seed=N + M, device=device)
    mine, ref, ref64 = leaves(*inputs), leaves(*inputs), leaves(*(t.double() for t in inputs))
    out = topk_encode(*mine, k, backend="triton")
    expect = topk_encode(*ref, k, backend="reference")
    oracle = topk_encode(*ref64, k, backend="reference")
    assert out.values.dtype == dtype and out.indices.dtype == torch.int64
    assert out.values.shape == (N, k) and out.indices.shape == (N, k)
    assert torch.equal(out.indices, expect.indices) and torch.equal(out.indices, oracle.indices)
    assert torch.equal(out.values, expect.values)  # grid data: exact pre-activations
    up = torch.randn(N, k, generator=torch.Generator().manual_seed(7)).to(device)
    _check_grads(mine, ref, ref64, ([out.values], [expect.values], [oracle.values]), [up])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES[:1] + SHAPES[4:5], ids=shape_id)
def test_gradient_topk_encode_matches_reference(device, dtype, shape):
    N, d, M, k = shape
    inputs = encoder_inputs(N, d, M, dtype, seed=N + M, device=device)
    grad, W_dec = _grad_inputs(N, d, M, dtype, N + M, device)
    mine, ref, ref64 = leaves(*inputs), leaves(*inputs), leaves(*(t.double() for t in inputs))

    def run(ins, backend, cast=None):
        x, W, be, bd = ins
        g, Wd = (grad, W_dec) if cast is None else (grad.to(cast), W_dec.to(cast))
        return gradient_topk_encode(x, g, W, be, Wd, bd, k, beta=0.5, backend=backend)

    out, expect, oracle = run(mine, "triton"), run(ref, "reference"), run(ref64, "reference", torch.float64)
    plain = topk_encode(*inputs, k, backend="reference")
    assert not torch.equal(out.indices, plain.indices)  # the gradient term changes selections
    assert torch.equal(out.indices, expect.indices) and torch.equal(out.indices, oracle.indices)
    assert torch.equal(out.values, expect.values)
    up = torch.randn(N, k, generator=torch.Generator().manual_seed(7)).to(device)
    _check_grads(mine, ref, ref64, ([out.values], [expect.values], [oracle.values]), [up])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_topk_with_beta_zero_or_zero_grad_is_topk(device, dtype):
    N, d, M, k = 40, 8, 50, 7
    x, W, be, bd = encoder_inputs(N, d, M, dtype, device=device)
    grad, W_dec = _grad_inputs(N, d, M, dtype, 0, device)
    plain = topk_encode(x, W, be, bd, k, backend="triton")
    for g, beta, norm in ((grad, 0.0, "none"), (torch.zeros_like(grad), 3.0, "token")):
        out = gradient_topk_encode(x, g, W, be, W_dec, bd, k, beta=beta, grad_norm=norm, backend="triton")
        assert torch.equal(out.indices, plain.indices) and torch.equal(out.values, plain.values)


def test_gaussian_float32_and_token_norm(device):
    x, W, be, bd = encoder_inputs(40, 32, 700, torch.float32, data="gauss", device=device)
    out = topk_encode(x, W, be, bd, 32, backend="triton")
    expect = topk_encode(x, W, be, bd, 32, backend="reference")
    assert torch.equal(out.indices, expect.indices)
    torch.testing.assert_close(out.values, expect.values, rtol=1e-5, atol=1e-5)
    grad = torch.randn(40, 32, generator=torch.Generator().manual_seed(3)).to(device) * 1e3
    grad[3] = 0
    W_dec = torch.randn(700, 32, generator=torch.Generator().manual_seed(4)).to(device)
    args = (x, grad, W, be, W_dec, bd, 10)
    out = gradient_topk_encode(*args, beta=2.0, grad_norm="token", backend="triton")
    expect = gradient_topk_encode(*args, beta=2.0, grad_norm="token", backend="reference")
    assert torch.equal(out.indices, expect.indices)
    torch.testing.assert_close(out.values, expect.values)


def test_latent_splits_merge_exactly(device):
    """The split-M grid and the candidates' merge: any number of splits gives the same keys."""
    from saekit.triton.encode_kernel import folded_bias, select_keys
    from saekit.triton.topk_encode import _merge_splits

    x, W, be, bd = encoder_inputs(21, 8, 700, torch.float32, seed=5, device=device)
    c = folded_bias(W, be, bd)
    dead = (torch.arange(700) % 5 == 0).to(device)
    first = None
    for splits in (1, 2, 3, 7):
        keys, aux = select_keys(x, W, c, 9, dead=dead, k_aux=6, splits=splits)
        assert keys.shape == (21, splits, 16)
        merged = torch.cat([_merge_splits(keys, 9), _merge_splits(aux, 6)], 1)
        first = merged if first is None else first
        assert torch.equal(merged, first)
    expect = topk_encode(x, W, be, bd, 9, dead=dead, k_aux=6, backend="reference")
    from saekit.triton.keys import key_latents

    assert torch.equal(key_latents(first), torch.cat([expect.indices, expect.aux_indices], 1))


def test_ties_go_to_lower_index(device):
    N, d, M, k = 6, 4, 300, 9
    x = torch.zeros(N, d, device=device)
    W = torch.randn(M, d, device=device)
    b_enc = torch.tensor([1.0, 2.0] * (M // 2), device=device)  # pre = b_enc in every row
    out = topk_encode(x, W, b_enc, torch.zeros(d, device=device), k, backend="triton")
    assert out.indices.tolist() == [[2 * i + 1 for i in range(k)]] * N
    assert out.values.tolist() == [[2.0] * k] * N


def test_nan_and_signed_zero_order(device):
    """NaN first (ties among NaNs by index), -0.0 equal to 0.0, as torch.sort orders them."""
    N, d, M = 3, 4, 12
    x, W = torch.zeros(N, d, device=device), torch.zeros(M, d, device=device)
    b_enc = torch.tensor([1.0, -0.0, 0.0, float("nan"), -1.0, float("inf"), -0.0, float("nan"),
                          -float("inf"), 1.0, 0.0, 2.0], device=device)
    out = topk_encode(x, W, b_enc, torch.zeros(d, device=device), M, backend="triton")
    expect = reference.select(b_enc.expand(N, M).cpu(), M)
    assert out.indices.tolist() == expect.tolist()
    assert out.values[:, :2].isnan().all()


@triton.jit
def _keys_kernel(score_ptr, latent_ptr, key_ptr, L: tl.constexpr):
    i = tl.arange(0, L)
    tl.store(key_ptr + i, score_keys(tl.load(score_ptr + i), tl.load(latent_ptr + i)))


def test_score_keys_order_signed_zeros_nans_and_infinities(device):
    """The packed keys straight from score_keys (a -0.0 never reaches it through the encoder,
    whose bias fold turns it into +0.0): -0.0 and 0.0 give one key, every NaN ranks first,
    and sorting the keys descending is SPEC's order (score descending, then latent ascending)."""
    nan = float("nan")
    scores = [1.0, -0.0, 0.0, nan, -1.0, float("inf"), -0.0, -nan, -float("inf"), 1.0, 0.0, 2.0,
              1e-45, -1e-45, 3.4e38, -3.4e38]
    score = torch.tensor(scores, dtype=torch.float32)
    score[7] = -score[7].abs()  # a NaN with its sign bit set
    latent = torch.arange(16, dtype=torch.int32)
    keys = torch.empty(16, dtype=torch.int64, device=device)
    _keys_kernel[(1,)](score.to(device), latent.to(device), keys, 16)
    keys = keys.cpu()
    same_latent = torch.empty(2, dtype=torch.int64).to(device)
    _keys_kernel[(1,)](torch.tensor([-0.0, 0.0]).to(device), torch.tensor([5, 5], dtype=torch.int32).to(device),
                       same_latent, 2)
    assert same_latent[0] == same_latent[1]
    assert keys.sort(descending=True).indices.tolist() == reference.select(score[None], 16)[0].tolist()


@pytest.mark.parametrize("op", ["topk", "gradient_topk"])
def test_float32_inputs_near_b_dec_keep_their_precision(device, op):
    """x = b_dec + small noise with |b_dec| ~ 100, as training makes it: float32 inputs form
    x - b_dec first, as the reference does (the folded b_enc - W_enc @ b_dec cancels ~1e-4 away
    and reorders latents), so selections match the float64 oracle's."""
    g = torch.Generator().manual_seed(0)
    N, d, M, k = 64, 64, 512, 16
    b_dec = torch.randn(d, generator=g) * 100
    x = b_dec + torch.randn(N, d, generator=g) * 0.1
    W, b_enc = torch.randn(M, d, generator=g) / d**0.5, torch.randn(M, generator=g) * 0.01
    grad, W_dec = torch.randn(N, d, generator=g), torch.randn(M, d, generator=g)

    def run(*t, backend):
        t = [u.to(device) for u in t]
        if op == "topk":
            return topk_encode(*t[:4], k, backend=backend)
        return gradient_topk_encode(t[0], t[4], t[1], t[2], t[5], t[3], k, beta=0.1, backend=backend)

    out = run(x, W, b_enc, b_dec, grad, W_dec, backend="triton")
    oracle = run(*(t.double() for t in (x, W, b_enc, b_dec, grad, W_dec)), backend="reference")
    assert torch.equal(out.indices.cpu(), oracle.indices.cpu())
    torch.testing.assert_close(out.values.double().cpu(), oracle.values.cpu(), rtol=1e-6, atol=1e-6)


def test_rows_with_fewer_than_k_positive(device):
    N, d, M, k = 10, 8, 30, 8
    x, W, be, bd = leaves(*encoder_inputs(N, d, M, torch.float32, device=device))
    with torch.no_grad():
        be[3:] = -100.0  # only latents 0..2 can be positive
    out = topk_encode(x, W, be, bd, k, backend="triton")
    expect = topk_encode(x, W, be, bd, k, backend="reference")
    assert torch.equal(out.indices, expect.indices)
    assert (out.values[:, 3:] == 0).all()
    out.values.sum().backward()
    pre = reference.pre_activations(x, W, be, bd).detach()
    selected_positive = torch.zeros(N, M, device=device).scatter(1, out.indices, 1.0) * (pre > 0)
    assert torch.equal(be.grad, selected_positive.sum(0))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k_aux", [0, 3, "all"])
def test_auxk_matches_reference(device, dtype, k_aux):
    N, d, M, k = 21, 8, 45, 4
    inputs = encoder_inputs(N, d, M, dtype, seed=3, device=device)
    dead = (torch.rand(M, generator=torch.Generator().manual_seed(4)) < 0.4).to(device)
    k_aux = int(dead.sum()) if k_aux == "all" else k_aux
    mine, ref, ref64 = leaves(*inputs), leaves(*inputs), leaves(*(t.double() for t in inputs))
    out = topk_encode(*mine, k, dead=dead, k_aux=k_aux, backend="triton")
    expect = topk_encode(*ref, k, dead=dead, k_aux=k_aux, backend="reference")
    oracle = topk_encode(*ref64, k, dead=dead, k_aux=k_aux, backend="reference")
    assert out.aux_indices.shape == (N, k_aux)
    assert torch.equal(out.indices, expect.indices) and torch.equal(out.aux_indices, expect.aux_indices)
    assert torch.equal(out.aux_values, expect.aux_values)
    up = [torch.randn(N, k).to(device), torch.randn(N, k_aux).to(device)]
    _check_grads(mine, ref, ref64, ([out.values, out.aux_values], [expect.values, expect.aux_values],
                                    [oracle.values, oracle.aux_values]), up)


def test_k_aux_above_dead_count_is_an_error(device):
    x, W, be, bd = encoder_inputs(3, 4, 10, torch.float32, device=device)
    dead = torch.zeros(10, dtype=torch.bool, device=device)
    dead[:2] = True
    with pytest.raises(ValueError, match="k_aux must lie in"):
        topk_encode(x, W, be, bd, 2, dead=dead, k_aux=3, backend="triton")


def test_non_contiguous_inputs(device):
    x, W, be, bd = encoder_inputs(20, 16, 30, torch.float32, device=device)
    x_nc = torch.stack([x, x], 2)[..., 0]
    W_nc = W.T.contiguous().T
    out = topk_encode(x_nc, W_nc, be, bd, 6, backend="triton")
    expect = topk_encode(x, W, be, bd, 6, backend="reference")
    assert torch.equal(out.indices, expect.indices) and torch.equal(out.values, expect.values)


def _code(N, d, M, k, dtype, seed, device):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(N, k, generator=g).relu()
    indices = torch.randint(0, M, (N, k), generator=g)
    return _to(device, values.to(dtype), indices, torch.randn(M, d, generator=g).to(dtype),
               torch.randn(d, generator=g).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(33, 16, 40, 5), (0, 8, 16, 4), (40, 70, 300, 20)], ids=shape_id)
def test_sparse_decode_matches_reference(device, dtype, shape):
    N, d, M, k = shape
    v, idx, W, b = _code(N, d, M, k, dtype, N + k, device)
    idx[:, -1] = idx[:, 0]  # repeated latents in every row add up
    mine, ref, ref64 = leaves(v, W, b), leaves(v, W, b), leaves(v.double(), W.double(), b.double())
    out = sparse_decode(mine[0], idx, *mine[1:], backend="triton")
    expect = sparse_decode(ref[0], idx, *ref[1:], backend="reference")
    oracle = sparse_decode(ref64[0], idx, *ref64[1:], backend="reference")
    assert out.dtype == dtype and out.shape == (N, d)
    assert_close_to_oracle(out.cpu(), expect.cpu(), oracle.cpu(), "x_hat")
    up = torch.randn(N, d, generator=torch.Generator().manual_seed(5)).to(device)
    for name, a, bb, c in zip(("dvalues", "dW_dec", "db_dec"), grads([out], mine, [up]),
                              grads([expect], ref, [up]), grads([oracle], ref64, [up])):
        assert a.dtype == dtype
        assert_close_to_oracle(a.cpu(), bb.cpu(), c.cpu(), name)


@pytest.mark.parametrize("bad", [-1, 9, 2**40])
def test_out_of_range_index_is_an_error(device, bad):
    v, idx, W, b = _code(4, 3, 9, 2, torch.float32, 0, device)
    idx[2, 1] = bad
    with pytest.raises(ValueError, match="indices must lie in"):
        sparse_decode(v, idx, W, b, backend="triton")
    with pytest.raises(ValueError, match="indices must lie in"):
        torch.ops.saekit_triton.sparse_decode_backward(torch.ones(4, 3, device=device), v, idx, W)


def test_dispatch_reasons(device, monkeypatch):
    cpu = torch.device("cpu")
    assert dispatch.supports("triton", "topk_encode", torch.device(device), torch.float32) is None
    assert "float64" in dispatch.supports("triton", "sparse_decode", cpu, torch.float64)
    assert "at most 256" in dispatch.supports("triton", "topk_encode", cpu, torch.float32, k=257)
    assert dispatch.choose("topk_encode", "auto", cpu) == "cpu"  # never the interpreter on "auto"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in dispatch.supports("triton", "topk_encode", cpu)
    monkeypatch.setattr(dispatch, "_TRITON_INSTALLED", False)
    assert "not installed" in dispatch.supports("triton", "topk_encode", torch.device("cuda"))


@pytest.mark.skipif(not dispatch._TRITON_INTERPRETER_OK, reason="the interpreter path needs triton >= 3.8")
def test_triton_imported_before_the_interpreter_was_asked_for_is_named():
    """Triton imported (by another library) before TRITON_INTERPRET=1 keeps compiled library
    functions that the interpreter cannot call: dispatch says so instead of failing in a kernel."""
    code = ("import os, torch, triton.language; os.environ['TRITON_INTERPRET'] = '1'; "
            "from saekit.ops import dispatch; "
            "print(dispatch.supports('triton', 'topk_encode', torch.device('cpu'), torch.float32))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "triton was imported" in proc.stdout and "before TRITON_INTERPRET=1" in proc.stdout


@pytest.mark.skipif(not dispatch._TRITON_INTERPRETER_OK, reason="the interpreter path needs triton >= 3.8")
def test_compiled_sae_in_a_fresh_process():
    """The first compiled call imports saekit.triton itself: dispatch must not guard on it."""
    code = ("import torch; from saekit.nn import TopKSAE, fvu; sae = TopKSAE(16, 64, 4, backend='triton'); "
            "x = torch.randn(8, 16); f = torch.compile(lambda m, x: fvu(x, m(x).x_hat), fullgraph=True); "
            "f(sae, x).backward(); print('grad', bool(sae.W_enc.grad.abs().sum() > 0))")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "grad True" in proc.stdout


def test_k_and_k_aux_at_the_limit(device):
    """k = 200 and k_aux = 256 use the widest key buffers (256) the fused encoder keeps."""
    x, W, be, bd = encoder_inputs(5, 4, 600, torch.float32, seed=9, device=device)
    dead = (torch.arange(600) % 2 == 0).to(device)
    out = topk_encode(x, W, be, bd, 200, dead=dead, k_aux=256, backend="triton")
    expect = topk_encode(x, W, be, bd, 200, dead=dead, k_aux=256, backend="reference")
    assert torch.equal(out.indices, expect.indices) and torch.equal(out.aux_indices, expect.aux_indices)
    assert torch.equal(out.values, expect.values) and torch.equal(out.aux_values, expect.aux_values)


def test_k_above_the_limit_is_an_error(device):
    x, W, be, bd = encoder_inputs(2, 4, 300, torch.float32, device=device)
    with pytest.raises(ValueError, match="at most 256"):
        topk_encode(x, W, be, bd, 257, backend="triton")
    from saekit.triton import topk_encode as triton_topk_encode

    with pytest.raises(ValueError, match="at most 256"):
        triton_topk_encode.topk_encode(x, W, be, bd, 257, None, 0)


def _opcheck_args(op, device):
    x, W, be, bd = encoder_inputs(9, 6, 20, torch.float32, data="gauss", device=device)
    g = torch.Generator().manual_seed(0)
    idx, values = torch.randint(0, 20, (9, 4), generator=g).to(device), torch.rand(9, 4, generator=g).to(device)
    W_dec, grad = torch.randn(20, 6, generator=g).to(device), torch.randn(9, 6, generator=g).to(device)
    dead = (torch.arange(20) % 3 == 0).to(device)
    leaf = lambda *ts: [t.clone().requires_grad_(True) for t in ts]
    return {
        "topk_encode": [(*leaf(x, W, be, bd), 4, None, 0), (*leaf(x, W, be, bd), 4, dead, 3)],
        "gradient_topk_encode": [(*leaf(x), grad, *leaf(W, be), W_dec, *leaf(bd), 4, 0.5)],
        # Column-major x, W and values too: the fakes must give the kernels' contiguous strides.
        "topk_encode_backward": [(torch.randn(9, 4).to(device), values, idx, x, W, bd),
                                 (torch.randn(9, 4).to(device), values, idx, x.T.contiguous().T, W.T.contiguous().T, bd),
                                 (torch.randn(9, 4).to(device), values, idx, x, W, bd, False)],
        "sparse_decode": [(*leaf(values), idx, *leaf(W_dec, bd))],
        "sparse_decode_backward": [(grad, values, idx, W_dec),
                                   (grad, values.T.contiguous().T, idx, W_dec.T.contiguous().T),
                                   (grad, values, idx, W_dec, False)],
    }[op]


@pytest.mark.parametrize("op", OPS)
def test_opcheck(device, op):
    for args in _opcheck_args(op, device):
        torch.library.opcheck(getattr(torch.ops.saekit_triton, op).default, args)


def test_every_triton_op_is_checked():
    """OPS (the opcheck list) names every op of the saekit_triton namespace."""
    defined = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("saekit_triton::")}
    assert defined == set(OPS)


@triton.jit
def _network_kernel(x_ptr, top_ptr, merged_ptr, R: tl.constexpr, L: tl.constexpr, K: tl.constexpr):
    x = tl.load(x_ptr + tl.arange(0, R)[:, None] * L + tl.arange(0, L)[None, :])
    out = tl.arange(0, R)[:, None] * K + tl.arange(0, K)[None, :]
    best = interpreter_topk.topk(x, K, False)
    tl.store(top_ptr + out, best)
    tl.store(merged_ptr + out, interpreter_topk.merge(best, interpreter_topk.topk(x * 3, K, True)))


def test_interpreter_topk_network(device):
    """The interpreter's bitonic top-k and merge against torch.sort, on packed-key-sized ints."""
    if not saekit.triton.INTERPRETED:
        pytest.skip("compiled kernels use tl.topk; this network serves only the interpreter")
    g = torch.Generator().manual_seed(0)
    for R, L, K in [(1, 16, 16), (4, 64, 8), (16, 128, 32), (2, 256, 256), (8, 2, 1)]:
        x = torch.randint(-50, 50, (R, L), generator=g) * 2**36 + torch.randint(0, 2**31, (R, L), generator=g)
        x = x.to(device)
        top, merged = torch.empty_like(x[:, :K]), torch.empty_like(x[:, :K])
        _network_kernel[(1,)](x, top, merged, R, L, K)
        assert torch.equal(top, x.sort(1, descending=True).values[:, :K])
        assert torch.equal(merged, torch.cat([x, x * 3], 1).sort(1, descending=True).values[:, :K])


def test_compiles_without_graph_breaks(device):
    x, W, be, bd = [t.requires_grad_(True) for t in encoder_inputs(8, 6, 30, torch.float32, data="gauss",
                                                                   device=device)]
    W_dec = torch.randn(30, 6, device=device, requires_grad=True)
    grad = torch.randn(8, 6, device=device)

    def step(x, W, be, bd, W_dec):
        code = saekit.topk_encode(x, W, be, bd, 4, backend="triton")
        g_code = saekit.gradient_topk_encode(x, grad, W, be, W_dec, bd, 4, grad_norm="token", backend="triton")
        x_hat = saekit.sparse_decode(code.values, code.indices, W_dec, bd, backend="triton")
        return (x_hat - x).pow(2).sum() + g_code.values.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss, expected = compiled(x, W, be, bd, W_dec), step(x, W, be, bd, W_dec)
    torch.testing.assert_close(loss, expected)
    for a, b in zip(torch.autograd.grad(loss, (W, be, W_dec)), torch.autograd.grad(expected, (W, be, W_dec))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("power", [20, -30])
def test_float16_gradients_outside_float16_range(device, power):
    """g is rounded to float16 for the h product: rows scaled by powers of two first, so that
    gradients beyond float16's range neither overflow nor flush to zero."""
    from tests.ops.cases import far_gradient_case

    args, beta = far_gradient_case(power, device=device)
    out = gradient_topk_encode(*args, 7, beta=beta, backend="triton")
    expect = gradient_topk_encode(*args, 7, beta=beta, backend="reference")
    assert torch.equal(out.indices, expect.indices)
    assert torch.equal(out.values, expect.values)


def test_float16_gradient_rows_at_float32_limits(device):
    """Rows whose largest gradient entry is 2**127, inf (beside 2**20), NaN or zero, and a
    zero-width g: the power-of-two row scales stay finite, come from the finite entries (2**21
    brings 2**20 into [0.5, 1)) and the selections match."""
    from tests.ops.cases import limit_gradient_case
    from saekit.triton.topk_encode import g_operand

    args = limit_gradient_case(device)
    grad = args[1]
    _, scale = g_operand(grad, torch.float16)
    row2 = grad[2][grad[2].isfinite()].abs().max()
    assert scale[:4].tolist() == [2.0**127, 2.0**21, 2.0 ** torch.frexp(row2)[1].item(), 1.0]
    _, scale = g_operand(grad[:, :0], torch.float16)
    assert scale.tolist() == [1.0] * 8
    out = gradient_topk_encode(*args, 5, beta=2.0**-126, backend="triton")
    expect = gradient_topk_encode(*args, 5, beta=2.0**-126, backend="reference")
    assert torch.equal(out.indices, expect.indices)
    assert torch.equal(out.values, expect.values)
