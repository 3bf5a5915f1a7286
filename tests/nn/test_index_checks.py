"""An SAE's training step (forward, loss, backward) runs no index range check, as the code it
decodes is its own encoder's: no host sync, so nothing stops the CPU from queueing work ahead.
A code from elsewhere (SparseDecoder, TopKSAE.decode, the sharded SAEs' decode) is checked."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from saekit.distributed import ShardedGradientTopKSAE, ShardedTopKSAE
from saekit.nn import GradientTopKSAE, SparseDecoder, TopKSAE, fvu
from tests.ops.cases import require

BACKENDS = ["cpu", "reference", "triton"]


def _range_checks(fn):
    """How many times fn runs aten::aminmax, the range check of every backend."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::aminmax")


@pytest.mark.parametrize("sae_class", [TopKSAE, GradientTopKSAE, ShardedTopKSAE, ShardedGradientTopKSAE])
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_step_runs_no_index_check(sae_class, backend):
    require(backend, "topk_encode", "cpu", torch.float32)
    torch.manual_seed(0)
    sae = sae_class(8, 24, 3, backend=backend)
    x = torch.randn(2, 5, 8)
    grad = torch.randn(2, 5, 8)

    def step():
        out = sae(x, grad) if "Gradient" in sae_class.__name__ else sae(x)
        fvu(x, out.x_hat).backward()

    assert _range_checks(step) == 0
    assert sae.W_dec.grad is not None and sae.W_enc.grad.abs().sum() > 0
    code = sae.encode(x)
    assert _range_checks(lambda: sae.decode(code)) == 1  # a code handed back by the caller


@pytest.mark.parametrize("sae_class", [TopKSAE, ShardedTopKSAE])
@pytest.mark.parametrize("bad", [-1, 24])
def test_decoding_a_foreign_code_refuses_bad_indices(sae_class, bad):
    sae = sae_class(8, 24, 3, backend="cpu")
    code = sae.encode(torch.randn(4, 8))
    indices = code.indices.clone()
    indices[2, 1] = bad
    with pytest.raises(ValueError, match="indices must lie in"):
        sae.decode((code.values, indices))
    with pytest.raises(ValueError, match="indices must lie in"):
        sae.decode_without_bias((code.values, indices))
    decoder = SparseDecoder(24, 8, backend="cpu")
    with pytest.raises(ValueError, match="indices must lie in"):
        decoder((code.values, indices))


@pytest.mark.gpu
@pytest.mark.parametrize("sae_class", [TopKSAE, GradientTopKSAE])
def test_triton_training_step_never_syncs(sae_class):
    """What the README says of a Triton training step: no host sync at all, once its kernels are
    compiled (CUDA's sync debug mode raises on any)."""
    torch.manual_seed(0)
    sae = sae_class(64, 1024, 8, backend="triton", device="cuda")
    x, grad = torch.randn(256, 64, device="cuda"), torch.randn(256, 64, device="cuda")

    def step():
        out = sae(x, grad) if sae_class is GradientTopKSAE else sae(x)
        fvu(x, out.x_hat).backward()

    step()  # compiles and autotunes
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
