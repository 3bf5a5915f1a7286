"""The trainer and ``saekit train`` on several processes (gloo, CPU).

- 4 ranks (2 data x 2 latent, spawned like the other distributed tests) against one process
  trained on the two data ranks' batches concatenated: same selections at every step, same
  parameters, Adam moments, logged metrics; per-shard checkpoints resumed exactly after one
  rank's Ctrl-C; the final checkpoint loads into a one-process SAE with the same outputs.
- ``torchrun --nproc-per-node 2 -m saekit train`` on the toy model, then resumed in one process.
- a rank that raises or hangs ends the torchrun job with a clear error within --dist-timeout.

Tolerances: the ranks add the same terms in another order than one process (partial
reconstructions summed over latent ranks, gradients averaged over data ranks, the FVU's variance
in float64), so float32 values differ by rounding; 6 Adam steps at lr 3e-3 move parameters by
about 1e-2, and rtol 1e-5 / atol 1e-6 (errors seen: 6e-8) is far below what a wrong reduction changes (each rank's
own FVU instead of the global one moves the Adam moments by about 10 %, a summed instead of an
averaged gradient doubles exp_avg). Selections and dead-latent counters must be equal.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from saekit.cli import main
from saekit.distributed import read_manifest
from saekit.io import load_sae
from saekit.training.monitor import read_metrics

from tests.distributed import trainer_workers as tw
from tests.distributed import workers

ROOT = Path(__file__).resolve().parents[2]
DIST_TIMEOUT_S = 3.0
DEADLINE_S = 45.0  # startup of torchrun and 2 workers on a loaded 2-core machine, plus the timeout


def close(got, expected, what):
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}: {m}")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    out = tmp_path_factory.mktemp("trainer_mesh")
    workers.spawn(tw.mesh_training, 4, str(out))
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(4)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process on the concatenation of both data ranks' batches of every step."""
    out = tmp_path_factory.mktemp("trainer_reference")
    model = tw.toy_model()
    trainer = tw.Recording(tw.make_saes(), tw.Concatenated(tw.source(model), 2), tw.train_config(), out)
    result = trainer.train()
    return out, trainer, result, model


def stitched(ranks, key):
    """A row-sharded tensor of data rank 0's latent group put back together."""
    return torch.cat([ranks[j][key] for j in range(tw.LAYOUT[1])])


def test_layout(mesh):
    _, ranks = mesh
    assert [r["coords"] for r in ranks] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [r["slice"] for r in ranks] == [(0, 16), (16, 32), (0, 16), (16, 32)]


def test_same_selections_at_every_step(mesh, reference):
    _, ranks = mesh
    _, trainer, result, _ = reference
    assert len(trainer.history) == tw.STEPS
    for r in ranks:
        assert r["tokens"] == result.tokens == tw.STEPS * 2 * tw.ROWS
        for step, (got, expected) in enumerate(zip(r["history"], trainer.history)):
            for name in expected:
                assert torch.equal(got[name], expected[name]), f"step {step + 1} {name}"


def test_same_parameters_and_adam_state(mesh, reference):
    _, ranks = mesh
    ref = tw.snapshot(reference[1])
    for data_rank in range(tw.LAYOUT[0]):
        group = [r["full"] for r in ranks[2 * data_rank:2 * data_rank + 2]]
        for key, expected in ref.items():
            if key.endswith(".since"):
                continue
            sharded = any(f".{p}" in key for p in ("W_enc", "b_enc", "W_dec"))
            got = torch.cat([g[key] for g in group]) if sharded and expected.dim() else group[0][key]
            close(got, expected, f"data rank {data_rank} {key}")
    for r in ranks[2:]:  # data replicas hold identical copies
        partner = ranks[ranks.index(r) - 2]
        assert all(torch.equal(r["full"][k], partner["full"][k]) for k in r["full"])


def test_logged_metrics_are_the_global_batch(mesh, reference):
    out, _ = mesh
    got, expected = read_metrics(out / "full"), read_metrics(reference[0])
    assert [r["step"] for r in got] == list(range(1, tw.STEPS + 1))  # rank 0 alone writes
    assert any(r["topk/auxk"] > 0 for r in expected)  # AuxK's split over data ranks is exercised
    for g, e in zip(got, expected):
        for key, value in e.items():
            assert g[key] == pytest.approx(value, rel=1e-5, abs=1e-7), f"step {e['step']} {key}"


def test_interrupt_on_one_rank_and_resume_equal_an_uninterrupted_run(mesh):
    out, ranks = mesh
    for r in ranks:
        assert r["stopped"] == (tw.STOP_AT, True)  # every rank stops at the step rank 3 got SIGINT
        assert r["resumed_at"] == tw.STOP_AT
        assert r["resumed_tokens"] == r["tokens"]
        for key, value in r["full"].items():
            assert torch.equal(r["resumed"][key], value), key
    steps = [rec["step"] for rec in read_metrics(out / "resumed")]
    assert steps == list(range(1, tw.STEPS + 1))


def test_checkpoint_is_per_shard_and_loads_into_one_process(mesh):
    out, ranks = mesh
    ckpt = Path(ranks[0]["checkpoint"])
    assert ckpt == out / "full" / "checkpoints" / f"step-{tw.STEPS:08d}"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["layout"] == {"data": 2, "latent": 2}
    assert sorted(p.name for p in (ckpt / "rng").iterdir()) == [f"rank-{r:05d}.safetensors" for r in range(4)]
    model = tw.toy_model()
    x, grad = tw.probe(model)
    for name in ("topk", "gradient_topk"):
        assert [(s["start"], s["end"]) for s in read_manifest(ckpt / name)["shards"]] == [(0, 16), (16, 32)]
        single = load_sae(ckpt / name)
        assert single.cfg.architecture == name and not hasattr(single, "shard_world")
        out1 = single(x, grad) if name == "gradient_topk" else single(x)
        for r in ranks:
            got = r["outputs"][name]
            assert torch.equal(got.code.indices, out1.code.indices)
            torch.testing.assert_close(got.code.values, out1.code.values, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got.x_hat, out1.x_hat, rtol=1e-5, atol=1e-6)


def torchrun(nproc: int, *args, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node nproc ARGS`` from the repository root."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


TOY_ARGS = ["--fast", "--no-plot", "--no-progress", "--checkpoint-every", "10"]


def test_torchrun_toy_then_resume_in_one_process(tmp_path, capsys):
    out = tmp_path / "toy"
    proc = torchrun(2, "-m", "saekit", "train", *TOY_ARGS, "--steps", "20", "--out", str(out),
                    "--dist-timeout", "60")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("saekit train: toy model") == 1 and "2 ranks (2 data x 1 latent" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 20 and results["tokens"] == 20 * 2 * 256
    assert results["saes"]["topk"]["fvu"] < 0.5 and results["saes"]["gradient_topk"]["fvu"] < 0.5
    assert read_manifest(out / "topk")["format"] == "saekit-sharded"
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 21))
    # The per-shard checkpoint of the 2-rank job resumes in one process.
    assert main(["train", *TOY_ARGS, "--steps", "24", "--out", str(out)]) == 0
    assert "resumed from a checkpoint" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["resumed"] and results["steps"] == 24 and results["tokens"] == 20 * 2 * 256 + 4 * 256
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 25))


@pytest.mark.parametrize("mode", ["hang", "raise"])
def test_failing_rank_ends_the_job_with_a_clear_error(tmp_path, mode):
    start = time.monotonic()
    proc = torchrun(2, "tests/distributed/trainer_workers.py", mode, *TOY_ARGS, "--steps", "50",
                    "--out", str(tmp_path), "--dist-timeout", str(DIST_TIMEOUT_S), timeout=120.0)
    elapsed = time.monotonic() - start
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert elapsed < DEADLINE_S, text
    if mode == "hang":
        pattern = (r"saekit train: error: saekit\.distributed: rank 0: [\w -]+ over ranks \[0, 1\] did not "
                   rf"complete within the {DIST_TIMEOUT_S:g} s timeout")
        assert re.search(pattern, text), text
    else:
        assert "rank 1 fails on purpose" in text, text
