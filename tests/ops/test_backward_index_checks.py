"""The index range check (aten::aminmax, then one copy to the host) runs in every public op and in
a direct call of a backward op, but not in the backward passes autograd runs: their indices came
from the encoder's own selection or from a decode forward that checked them, so checking again
would only add a device sync per step."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from saekit.ops import sparse_decode, topk_encode
from tests.ops.cases import DEVICES_BACKENDS, encoder_inputs, leaves, require

# Triton on CPU tensors runs in its interpreter where no GPU is present (tests/conftest.py).
BACKENDS = DEVICES_BACKENDS + (("cpu", "triton"),)


def _range_checks(fn):
    """How many times fn runs aten::aminmax (the range check of C++ and Python alike)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::aminmax")


def _namespace(backend):
    if backend == "triton":
        import saekit.triton.sparse_decode  # noqa: F401  (registers torch.ops.saekit_triton)
        import saekit.triton.topk_encode  # noqa: F401

        return torch.ops.saekit_triton
    return torch.ops.saekit


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_decode_backward_does_not_check_again(device, backend):
    require(backend, "sparse_decode", device, torch.float32)
    g = torch.Generator().manual_seed(0)
    values, W, b = leaves(*(t.to(device) for t in (torch.rand(6, 3, generator=g), torch.randn(11, 5, generator=g),
                                                   torch.randn(5, generator=g))))
    indices = torch.randint(0, 11, (6, 3), generator=g).to(device)
    out = []
    assert _range_checks(lambda: out.append(sparse_decode(values, indices, W, b, backend=backend))) >= 1
    assert _range_checks(lambda: out[0].sum().backward()) == 0
    assert W.grad is not None and values.grad is not None
    direct = _namespace(backend).sparse_decode_backward
    assert _range_checks(lambda: direct(torch.ones(6, 5, device=device), values.detach(), indices, W.detach())) == 1


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_encode_backward_does_not_check(device, backend):
    require(backend, "topk_encode", device, torch.float32)
    x, W, be, bd = (t.requires_grad_(True) for t in encoder_inputs(7, 4, 12, torch.float32, device=device))
    dead = (torch.arange(12) % 2 == 0).to(device)
    code = topk_encode(x, W, be, bd, 3, dead=dead, k_aux=2, backend=backend)
    assert _range_checks(lambda: (code.values.sum() + code.aux_values.sum()).backward()) == 0
    assert W.grad is not None and x.grad is not None
    direct = _namespace(backend).topk_encode_backward
    args = (torch.ones(7, 3, device=device), code.values.detach(), code.indices, x.detach(), W.detach(), bd.detach())
    assert _range_checks(lambda: direct(*args)) == 1
    assert _range_checks(lambda: direct(*args, check_indices=False)) == 0


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_direct_backward_calls_still_refuse_bad_indices(device, backend):
    require(backend, "topk_encode", device, torch.float32)
    ns = _namespace(backend)
    x, W, _, bd = encoder_inputs(4, 3, 9, torch.float32, device=device)
    values = torch.ones(4, 2, device=device)
    for bad in (-1, 9):
        idx = torch.zeros(4, 2, dtype=torch.int64, device=device)
        idx[1, 1] = bad
        with pytest.raises(ValueError, match="indices must lie in"):
            ns.topk_encode_backward(values, values, idx, x, W, bd)
        with pytest.raises(ValueError, match="indices must lie in"):
            ns.sparse_decode_backward(torch.ones(4, 3, device=device), values, idx, W)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_indices_changed_in_place_after_the_forward_are_refused(device, backend):
    """What makes skipping the check safe: autograd refuses saved indices written since."""
    require(backend, "sparse_decode", device, torch.float32)
    values, W, b = leaves(torch.rand(4, 2, device=device), torch.randn(9, 3, device=device), torch.zeros(3, device=device))
    indices = torch.zeros(4, 2, dtype=torch.int64, device=device)
    out = sparse_decode(values, indices, W, b, backend=backend)
    indices[1, 1] = 10**6
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    x, W, be, bd = (t.requires_grad_(True) for t in encoder_inputs(5, 3, 8, torch.float32, device=device))
    code = topk_encode(x, W, be, bd, 2, backend=backend)
    code.indices[0, 0] = -(10**6)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        code.values.sum().backward()
