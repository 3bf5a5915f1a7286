"""A 2 (data) x 2 (latent) layout on 4 gloo ranks: data-parallel training of a latent-sharded
SAE matches one process on the whole batch; dead-latent statistics and metrics are reduced over
the data group only."""

import pytest
import torch
from saekit.distributed import ParallelLayout, shard_bounds
from saekit.nn import DeadLatentTracker, fvu

from tests.distributed.scenarios import TRAIN, TRAIN_STEPS, full_sae, train_steps


def test_layout_numbering():
    layout = ParallelLayout.for_world(8, latent=4)
    assert (layout.data, layout.latent) == (2, 4)
    assert layout.latent_groups() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert layout.data_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.coords(6) == (1, 2)
    with pytest.raises(ValueError, match="must divide"):
        ParallelLayout.for_world(6, latent=4)
    assert [shard_bounds(10, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    with pytest.raises(ValueError, match="at least one latent"):
        shard_bounds(3, 4, 0)


def test_coordinates_and_slices(mesh2x2):
    _, ranks = mesh2x2
    assert [r["coords"] for r in ranks] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [(r["start"], r["end"]) for r in ranks] == [(0, 12), (12, 24), (0, 12), (12, 24)]


def test_data_parallel_training_matches_one_process(mesh2x2):
    _, ranks = mesh2x2
    reference, _ = train_steps(full_sae(TRAIN), auxk=False)
    for step in range(TRAIN_STEPS):
        ref = reference[step]
        for data_rank in range(2):
            pair = ranks[2 * data_rank:2 * data_rank + 2]
            for name in ("W_enc", "b_enc", "W_dec"):
                stitched = torch.cat([r["train"][step][name] for r in pair])
                torch.testing.assert_close(stitched, ref[name], rtol=1e-5, atol=1e-6,
                                           msg=lambda m, step=step, name=name: f"step {step} {name}: {m}")
            for r in pair:
                torch.testing.assert_close(r["train"][step]["b_dec"], ref["b_dec"], rtol=1e-5, atol=1e-6)
        half = TRAIN.N // 2
        for data_rank in range(2):
            expected = ref["indices"][data_rank * half:(data_rank + 1) * half]
            assert torch.equal(ranks[2 * data_rank]["train"][step]["indices"], expected)


def _assert_grads_of(sae, ranks, key):
    """Each data rank's latent shards of ranks' gradients ``key`` stitch into sae's gradients."""
    for data_rank in range(2):
        pair = ranks[2 * data_rank:2 * data_rank + 2]
        for name in ("W_enc", "b_enc", "W_dec"):
            stitched = torch.cat([r[key][name] for r in pair])
            torch.testing.assert_close(stitched, getattr(sae, name).grad, rtol=1e-5, atol=1e-6)
        for r in pair:
            torch.testing.assert_close(r[key]["b_dec"], sae.b_dec.grad, rtol=1e-5, atol=1e-6)


def test_ddp_over_the_data_group_matches_one_process(mesh2x2):
    _, ranks = mesh2x2
    t = TRAIN.tensors()
    sae = full_sae(TRAIN)
    out = sae(t["x"], dead=t["dead"])
    ((t["x"] - out.x_hat).pow(2).sum() / TRAIN.N).backward()
    _assert_grads_of(sae, ranks, "ddp_grads")


def test_dead_latents_and_metrics_reduced_over_data_group(mesh2x2):
    _, ranks = mesh2x2
    t = TRAIN.tensors()
    out = full_sae(TRAIN)(t["x"], dead=t["dead"])
    tracker = DeadLatentTracker(TRAIN.M, 1)
    tracker.update(out.code.indices, out.code.values)
    half = TRAIN.N // 2
    halves = [slice(0, half), slice(half, TRAIN.N)]
    with torch.no_grad():
        mean_fvu = sum(fvu(t["x"][h], out.x_hat[h]) for h in halves) / 2
        full_fvu = fvu(t["x"], out.x_hat)
    for r in ranks:
        assert torch.equal(r["since"], tracker.tokens_since_fired)  # tokens counted once, not per latent rank
        torch.testing.assert_close(r["metrics"]["fvu"], mean_fvu.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["metrics"]["l0"], out.code.l0.mean(), rtol=1e-6, atol=0.0)
        torch.testing.assert_close(r["global_fvu"], full_fvu.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["x_mean"], t["x"].mean(0), rtol=1e-6, atol=1e-7)


def test_a_data_rank_without_rows(mesh2x2):
    """Data rank 1 has no rows: the gradients (FVU and AuxK) are one process's on data rank 0's
    rows, and the row-weighted mean counts the ranks' rows, not the ranks."""
    from saekit.nn.metrics import auxk_loss

    _, ranks = mesh2x2
    t = TRAIN.tensors()
    sae = full_sae(TRAIN)
    out = sae(t["x"], dead=t["dead"])
    (fvu(t["x"], out.x_hat) + auxk_loss(t["x"] - out.x_hat, sae.decode_without_bias(out.aux)) / 32).backward()
    _assert_grads_of(sae, ranks, "uneven_grads")
    expected = torch.cat([t["x"], t["x"][:4]]).float().mean(0)
    for r in ranks:
        torch.testing.assert_close(r["row_mean"], expected)
