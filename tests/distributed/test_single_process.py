"""The sharded SAEs in one process (no process group): one shard holding every latent behaves
exactly as the plain saekit SAE, and bad arguments raise clear errors."""

import pytest
import torch
from saekit.distributed import ShardedGradientTopKSAE, ShardedTopKSAE, build_sharded
from saekit.distributed.sharded_sae import SHARDED_CLASSES
from saekit.nn import SAEConfig

from tests.distributed.scenarios import CASES, full_sae, run_case


@pytest.mark.parametrize("case", CASES[:3] + CASES[5:6], ids=lambda c: c.name)
def test_one_shard_equals_the_plain_sae(case):
    ref = run_case(full_sae(case), case)
    got = run_case(SHARDED_CLASSES[case.arch].from_sae(full_sae(case)), case)
    for key in ("indices", "aux_indices", "plain_indices"):
        assert torch.equal(got[key], ref[key])
    for key in ("x_hat", "values", "aux_values", "dW_enc", "db_enc", "dW_dec", "db_dec", "dx"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-5)


def test_leading_dims_and_empty_batch():
    sae = ShardedTopKSAE(8, 12, 3, backend="cpu")
    out = sae(torch.randn(2, 5, 8))
    assert out.x_hat.shape == (2, 5, 8) and out.code.indices.shape == (2, 5, 3)
    empty = sae(torch.randn(0, 8), dead=torch.ones(12, dtype=torch.bool))
    assert empty.x_hat.shape == (0, 8) and empty.aux.indices.shape == (0, 12)  # k_aux clamped to the dead count


def test_local_initialisation_is_unit_norm_and_tied():
    sae = ShardedGradientTopKSAE(8, 12, 3, init_seed=3)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(12))
    assert torch.equal(sae.W_enc, sae.W_dec)


def test_bad_arguments():
    sae = ShardedTopKSAE(8, 12, 3, backend="cpu")
    with pytest.raises(ValueError, match="d_in = 8"):
        sae(torch.randn(4, 7))
    with pytest.raises(ValueError, match=r"dead must be a bool tensor of shape \[n_latents\] = \[12\]"):
        sae(torch.randn(4, 8), dead=torch.zeros(6, dtype=torch.bool))
    with pytest.raises(ValueError, match="latent sharding supports"):
        build_sharded(SAEConfig(8, 12, 3, architecture="batch_topk"))
    with pytest.raises(ValueError, match="shards architecture 'topk'"):
        ShardedTopKSAE.from_sae(full_sae(CASES[5]))
