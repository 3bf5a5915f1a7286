"""Per-shard checkpoints: 4 ranks -> 2 ranks -> 1 process give the same SAE, optimizer state
included; the manifest, atomic writes and clear errors for a damaged checkpoint."""

import json

import pytest
import saekit.io
import torch
from saekit.distributed import (
    ShardedTopKSAE,
    load_optimizer_state,
    load_sharded,
    load_unsharded,
    read_manifest,
    save_sharded,
)
from saekit.nn import TopKSAE

from tests.distributed.scenarios import TRAIN, TRAIN_STEPS, full_sae, train_steps


def _same_outputs(a, b):
    assert torch.equal(a.code.indices, b.code.indices)
    assert torch.equal(a.aux.indices, b.aux.indices)
    torch.testing.assert_close(a.x_hat, b.x_hat, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.code.values, b.code.values, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def trained():
    sae = full_sae(TRAIN)
    _, opt = train_steps(sae)
    return sae, opt


def test_manifest_names_shards_by_rank_and_slice(world4):
    path = world4[0] / "ckpt"
    manifest = json.loads((path / "cfg.json").read_text())
    assert manifest["format"] == "saekit-sharded"
    assert [(s["rank"], s["start"], s["end"]) for s in manifest["shards"]] == [(0, 0, 6), (1, 6, 12), (2, 12, 18),
                                                                              (3, 18, 24)]
    assert manifest["shards"][1]["file"] == "shard-001-of-004_latents-6-12.safetensors"
    assert manifest["extra"] == {"step": TRAIN_STEPS}
    assert not (world4[0] / "ckpt.partial").exists()


def test_four_ranks_load_into_one_process(world4, trained):
    sae, opt = trained
    loaded = load_unsharded(world4[0] / "ckpt", backend="cpu")
    assert type(loaded) is TopKSAE
    for name, p in sae.named_parameters():
        torch.testing.assert_close(getattr(loaded, name), p, rtol=1e-5, atol=1e-6)
    via_io = saekit.io.load_sae(world4[0] / "ckpt", backend="cpu")
    assert torch.equal(via_io.W_enc, loaded.W_enc)
    fresh = torch.optim.Adam(loaded.parameters(), lr=1e-2)
    assert load_optimizer_state(world4[0] / "ckpt", loaded, fresh) == {"step": TRAIN_STEPS}
    for name, p in sae.named_parameters():
        ref, got = opt.state[p], fresh.state[getattr(loaded, name)]
        assert float(got["step"]) == float(ref["step"]) == TRAIN_STEPS
        torch.testing.assert_close(got["exp_avg"], ref["exp_avg"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got["exp_avg_sq"], ref["exp_avg_sq"], rtol=1e-5, atol=1e-9)


def test_four_ranks_reshard_onto_two(world4, world2, trained):
    t = TRAIN.tensors()
    single = load_unsharded(world4[0] / "ckpt", backend="cpu")
    expected = single(t["x"], dead=t["dead"])
    _, ranks = world2
    assert [(r["resharded"]["start"], r["resharded"]["end"]) for r in ranks] == [(0, 12), (12, 24)]
    sae, opt = trained
    for r in ranks:
        _same_outputs(r["resharded"]["out"], expected)
        assert r["resharded"]["extra"] == {"step": TRAIN_STEPS}
    stitched = torch.cat([r["resharded"]["exp_avg"] for r in ranks])
    torch.testing.assert_close(stitched, opt.state[sae.W_enc]["exp_avg"], rtol=1e-5, atol=1e-7)


def test_two_ranks_resaved_load_into_one(world4, world2):
    """4 -> 2 -> 1: the checkpoint the 2 ranks wrote again loads into one process, both as a
    plain SAE and as a one-shard sharded SAE, with the same outputs."""
    t = TRAIN.tensors()
    resaved = world2[0] / "resaved"
    assert len(read_manifest(resaved)["shards"]) == 2
    expected = load_unsharded(world4[0] / "ckpt", backend="cpu")(t["x"], dead=t["dead"])
    _same_outputs(load_unsharded(resaved, backend="cpu")(t["x"], dead=t["dead"]), expected)
    one = load_sharded(resaved, backend="cpu")
    assert (one.start, one.end) == (0, TRAIN.M)
    _same_outputs(one(t["x"], dead=t["dead"]), expected)


def test_plain_checkpoint_loads_as_one_shard(tmp_path):
    sae = TopKSAE(8, 12, 3, backend="cpu")
    sae.save(tmp_path / "plain")
    sharded = load_sharded(tmp_path / "plain", backend="cpu")
    assert torch.equal(sharded.W_dec, sae.W_dec) and torch.equal(sharded.b_dec, sae.b_dec)


@pytest.fixture
def small_checkpoint(tmp_path):
    sae = ShardedTopKSAE(8, 12, 3, backend="cpu")
    return save_sharded(sae, tmp_path / "ckpt")


def test_missing_shard_is_named(small_checkpoint):
    shard = next(small_checkpoint.glob("shard-*.safetensors"))
    shard.unlink()
    with pytest.raises(ValueError, match=shard.name):
        load_unsharded(small_checkpoint)


def test_gap_in_manifest_is_an_error(small_checkpoint):
    cfg = json.loads((small_checkpoint / "cfg.json").read_text())
    cfg["shards"][0]["end"] = 5
    (small_checkpoint / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="cover latents"):
        load_sharded(small_checkpoint)


def test_corrupt_shard_is_named(small_checkpoint):
    shard = next(small_checkpoint.glob("shard-*.safetensors"))
    shard.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        load_unsharded(small_checkpoint)


def test_save_replaces_a_checkpoint_and_leaves_no_staging(small_checkpoint):
    sae = ShardedTopKSAE(8, 12, 3, backend="cpu", init_seed=1)
    save_sharded(sae, small_checkpoint, extra={"step": 7})
    assert read_manifest(small_checkpoint)["extra"] == {"step": 7}
    assert torch.equal(load_sharded(small_checkpoint).W_dec, sae.W_dec)
    assert sorted(p.name for p in small_checkpoint.parent.iterdir()) == ["ckpt"]


def test_checkpoint_without_optimizer_says_so(small_checkpoint):
    sae = load_sharded(small_checkpoint)
    with pytest.raises(ValueError, match="without optimizer state"):
        load_optimizer_state(small_checkpoint, sae, torch.optim.Adam(sae.parameters()))
