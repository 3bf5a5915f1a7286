"""Every custom op of torch.ops.saekit: opcheck (schema, fake, autograd registration) and the
CUDA kernels registered whenever the build compiled them."""

import os

import pytest
import torch

import saekit
from saekit._extension import BUILD_INFO, has_kernel
from saekit.ops import OPS
from tests.ops.cases import encoder_inputs


def _sample_args(op):
    x, W, be, bd = encoder_inputs(9, 6, 20, torch.float32, data="gauss")
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 20, (9, 4), generator=g)
    values = torch.rand(9, 4, generator=g)
    W_dec = torch.randn(20, 6, generator=g)
    dead = torch.arange(20) % 3 == 0
    leaf = lambda *ts: [t.clone().requires_grad_(True) for t in ts]  # noqa: E731
    return {
        "topk_encode": [(*leaf(x, W, be, bd), 4, None, 0), (*leaf(x, W, be, bd), 4, dead, 3)],
        "gradient_topk_encode": [(*leaf(x), torch.randn(9, 6), *leaf(W, be), W_dec, *leaf(bd), 4, 0.5)],
        # Column-major x, W and values too: the fakes must give the kernels' contiguous strides.
        "topk_encode_backward": [(torch.randn(9, 4), values, idx, x, W, bd),
                                 (torch.randn(9, 4), values, idx, x.T.contiguous().T, W.T.contiguous().T, bd),
                                 (torch.randn(9, 4), values, idx, x, W, bd, False)],
        "sparse_decode": [(*leaf(values), idx, *leaf(W_dec, bd))],
        "sparse_decode_backward": [(torch.randn(9, 6), values, idx, W_dec),
                                   (torch.randn(9, 6), values.T.contiguous().T, idx, W_dec.T.contiguous().T),
                                   (torch.randn(9, 6), values, idx, W_dec, False)],
    }[op]


@pytest.mark.parametrize("op", OPS)
def test_opcheck(op):
    for args in _sample_args(op):
        torch.library.opcheck(getattr(torch.ops.saekit, op).default, args)


def test_every_schema_is_listed():
    """OPS must name every op the extension defines, so none escapes opcheck."""
    defined = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("saekit::")}
    assert defined == set(OPS)


@pytest.mark.parametrize("op", OPS)
def test_cpu_kernels_registered(op):
    assert has_kernel(op, "CPU")


@pytest.mark.parametrize("op", OPS)
def test_cuda_kernels_registered_when_built(op):
    """CI builds with CUDA and sets SAEKIT_EXPECT_CUDA=1, so a build that silently dropped the
    CUDA sources fails here instead of skipping."""
    if os.environ.get("SAEKIT_EXPECT_CUDA") == "1":
        assert BUILD_INFO["with_cuda"], "the build was expected to compile the CUDA kernels"
    if not BUILD_INFO["with_cuda"]:
        pytest.skip("saekit._C was built CPU-only")
    assert BUILD_INFO["cuda_archs"]
    assert has_kernel(op, "CUDA")


def test_auto_picks_cpu_kernels_and_logs_once(caplog):
    from saekit.ops import dispatch

    dispatch._logged.clear()
    x, W, be, bd = encoder_inputs(3, 4, 8, torch.float32)
    with caplog.at_level("DEBUG", logger="saekit.dispatch"):
        saekit.topk_encode(x, W, be, bd, 2)
        saekit.topk_encode(x, W, be, bd, 2)
    records = [r.getMessage() for r in caplog.records if r.name == "saekit.dispatch"]
    assert records == ["saekit.ops.topk_encode on cpu: backend 'cpu' (none skipped)"]
    assert dispatch.choose("sparse_decode", "auto", torch.device("cpu")) == "cpu"


def test_auto_falling_back_to_the_dense_reference_warns_with_the_reason(caplog, monkeypatch):
    from saekit.ops import dispatch

    monkeypatch.setattr(dispatch, "_logged", set())
    monkeypatch.setattr(dispatch, "KERNELS", frozenset(k for k in dispatch.KERNELS if k[1] != "CPU"))
    with caplog.at_level("DEBUG", logger="saekit.dispatch"):
        assert dispatch.choose("topk_encode", "auto", torch.device("cpu")) == "reference"
    (record,) = [r for r in caplog.records if r.name == "saekit.dispatch"]
    assert record.levelname == "WARNING"
    assert "backend 'reference'" in record.getMessage() and "no CPU kernel" in record.getMessage()


def test_compiles_without_graph_breaks():
    x, W, be, bd = [t.requires_grad_(True) for t in encoder_inputs(8, 6, 30, torch.float32, data="gauss")]
    W_dec = torch.randn(30, 6, requires_grad=True)

    def step(x, W, be, bd, W_dec):
        code = saekit.topk_encode(x, W, be, bd, 4)
        x_hat = saekit.sparse_decode(code.values, code.indices, W_dec, bd)
        return (x_hat - x).pow(2).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x, W, be, bd, W_dec)
    expected = step(x, W, be, bd, W_dec)
    torch.testing.assert_close(loss, expected)
    g1 = torch.autograd.grad(loss, (W, be, W_dec))
    g2 = torch.autograd.grad(expected, (W, be, W_dec))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
