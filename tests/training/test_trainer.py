import pytest
import torch

from saekit.nn import GradientTopKSAE, TopKSAE
from saekit.toy import ToyConfig, ToySource, train_toy_model
from saekit.training import CheckpointError, TrainConfig, Trainer, latest_checkpoint
from saekit.training.monitor import read_metrics

from tests.training.signalling_source import SignallingSource

TOY = ToyConfig(n_features=16, n_hidden=6, feature_prob=0.1)


@pytest.fixture(scope="module")
def toy_model():
    return train_toy_model(TOY, steps=100, batch_size=128)


def make_trainer(toy_model, out, *, steps, source=None, **cfg):
    saes = {}
    for name, cls in (("topk", TopKSAE), ("gradient_topk", GradientTopKSAE)):
        torch.manual_seed(0)
        saes[name] = cls(TOY.n_hidden, 32, 3, k_aux=8)
    source = source or ToySource(toy_model, 64, seed=3)
    cfg = TrainConfig(**{"steps": steps, "warmup_steps": 2, "dead_threshold_tokens": 300, "log_every": 1,
                         "progress": False, "autocast": "none", **cfg})
    return Trainer(saes, source, cfg, out)


def state(trainer):
    out = {}
    for name, run in trainer.runs.items():
        out.update({f"{name}.{k}": v.clone() for k, v in run.sae.state_dict().items()})
        out[f"{name}.dead"] = run.tracker.tokens_since_fired.clone()
        for i, s in run.optimizer.state_dict()["state"].items():
            out.update({f"{name}.opt{i}.{k}": torch.as_tensor(v).clone() for k, v in s.items()})
    return out


def test_short_run_lowers_fvu(toy_model, tmp_path):
    trainer = make_trainer(toy_model, tmp_path, steps=60, lr=3e-3)
    first = trainer.train_step()
    result = trainer.train()
    for name in ("topk", "gradient_topk"):
        assert result.metrics[f"{name}/fvu"] < 0.6 * float(first[f"{name}/fvu"])
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 59


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_is_exact(toy_model, tmp_path, accum):
    """Training 2N steps equals N steps, checkpoint, a fresh trainer resuming, N steps."""
    n = 8
    kw = dict(grad_accum=accum, dead_threshold_tokens=32)
    full = make_trainer(toy_model, tmp_path / "full", steps=2 * n, **kw)
    full.train()
    half = make_trainer(toy_model, tmp_path / "half", steps=n, **kw)
    half.cfg.steps = 2 * n  # same schedule as the full run
    for _ in range(n):
        half.train_step()
    half.save_checkpoint()
    resumed = make_trainer(toy_model, tmp_path / "half", steps=2 * n, **kw)
    assert resumed.resume()
    assert resumed.step == n and resumed.source.position == n * accum
    logged = read_metrics(tmp_path / "full")
    assert any(r["topk/dead"] > 0 for r in logged[n:]) and any(r["topk/auxk"] > 0 for r in logged[n:])
    resumed.train()
    a, b = state(full), state(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.tokens == full.tokens


def test_interrupt_writes_a_checkpoint_and_resume_loses_nothing(toy_model, tmp_path):
    full = make_trainer(toy_model, tmp_path / "full", steps=10)
    full.train()
    source = SignallingSource(toy_model, 64, seed=3, at=4)
    stopped = make_trainer(toy_model, tmp_path / "run", steps=10, source=source)
    result = stopped.train()
    assert result.interrupted and result.step == 5
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-00000005"
    resumed = make_trainer(toy_model, tmp_path / "run", steps=10)
    assert resumed.resume()
    resumed.train()
    a, b = state(full), state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 10


def test_checkpoints_are_rotated_and_corruption_is_detected(toy_model, tmp_path):
    trainer = make_trainer(toy_model, tmp_path, steps=6, checkpoint_every=2, keep_checkpoints=2)
    trainer.train()
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step-00000004", "step-00000006"]
    weights = tmp_path / "checkpoints" / "step-00000006" / "topk" / "sae.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt.*topk/sae.safetensors"):
        make_trainer(toy_model, tmp_path, steps=6).resume()
    (tmp_path / "checkpoints" / "step-00000006" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json"):
        make_trainer(toy_model, tmp_path, steps=6).resume(tmp_path / "checkpoints" / "step-00000006")


def test_checkpoint_of_other_saes_is_rejected(toy_model, tmp_path):
    make_trainer(toy_model, tmp_path, steps=1).train()
    torch.manual_seed(0)
    other = Trainer({"topk": TopKSAE(TOY.n_hidden, 32, 4), "gradient_topk": GradientTopKSAE(TOY.n_hidden, 32, 3)},
                    ToySource(toy_model, 64), TrainConfig(steps=2, progress=False), tmp_path)
    with pytest.raises(CheckpointError, match="differs"):
        other.resume()


def test_dimension_mismatch_is_a_clear_error(toy_model, tmp_path):
    with pytest.raises(ValueError, match="d_in = 5 but the activations have d = 6"):
        Trainer({"topk": TopKSAE(5, 8, 2)}, ToySource(toy_model, 8), TrainConfig(progress=False), tmp_path)


def test_bf16_autocast_trains_float32_master_weights(toy_model, tmp_path):
    trainer = make_trainer(toy_model, tmp_path, steps=20, autocast="bf16", lr=3e-3)
    first = {k: float(v) for k, v in trainer.train_step().items()}
    result = trainer.train()
    assert result.metrics["topk/fvu"] < first["topk/fvu"]
    assert all(p.dtype == torch.float32 for r in trainer.runs.values() for p in r.sae.parameters())


class HalfBatches(ToySource):
    """Batch j is one half of batch j // 2 of the source with twice the batch size."""

    def next_batch(self):
        full = ToySource(self.model, 2 * self.batch_size, seed=self.seed)
        full.position = self.position // 2
        x, grad = full.next_batch()
        half = slice(0, self.batch_size) if self.position % 2 == 0 else slice(self.batch_size, None)
        self.position += 1
        return x[half], grad[half]


def _gradients_per_step(trainer, steps):
    """Every SAE's parameter gradients as the optimizer receives them, for each step."""
    seen = []
    for name, run in trainer.runs.items():
        run.optimizer.register_step_pre_hook(
            lambda opt, args, kw, name=name: seen.append((name, [p.grad.clone() for p in trainer.runs[name].sae.parameters()])))
    metrics = [trainer.train_step() for _ in range(steps)]
    return seen, metrics


@pytest.mark.parametrize("init_b_dec", ["mean", "zero"])
def test_accumulated_micro_batches_equal_one_batch(toy_model, tmp_path, init_b_dec):
    """grad_accum = 2 on halves of the batches gives the gradients (and logged FVU) of
    grad_accum = 1 on the whole batches: the FVU divides by the whole step's variance and b_dec
    starts at the whole first step's mean. (AuxK is off here: no latent is dead yet.)"""
    one = make_trainer(toy_model, tmp_path / "one", steps=3, init_b_dec=init_b_dec,
                       source=ToySource(toy_model, 64, seed=3))
    two = make_trainer(toy_model, tmp_path / "two", steps=3, init_b_dec=init_b_dec, grad_accum=2,
                       source=HalfBatches(toy_model, 32, seed=3))
    (g1, m1), (g2, m2) = _gradients_per_step(one, 3), _gradients_per_step(two, 3)
    assert len(g1) == len(g2) == 6
    for (name, a), (_, b) in zip(g1, g2):
        for p, q in zip(a, b):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    for a, b in zip(m1, m2):
        for key in ("topk/fvu", "gradient_topk/fvu", "topk/loss", "topk/l0"):
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-7)
