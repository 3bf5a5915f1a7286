import json

import pytest
import torch

from saekit.cli import main
from saekit.toy import ToyConfig, ToyModel, toy_activations, train_toy_model


def test_toy_gradients_are_per_row_loss_gradients():
    model = ToyModel(ToyConfig(n_features=8, n_hidden=3), generator=torch.Generator().manual_seed(0))
    x = model.sample(5, torch.Generator().manual_seed(1))
    h, grad = toy_activations(model, x)
    for i in range(5):
        hi = h[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model.loss_per_row(x[i:i + 1], model.decode(hi)).sum(), hi)
        torch.testing.assert_close(grad[i:i + 1], g)


def test_toy_model_learns_superposition():
    cfg = ToyConfig(n_features=12, n_hidden=4, feature_prob=0.05, importance_decay=1.0)
    model = train_toy_model(cfg, steps=200, batch_size=256)
    assert int(model.represented().sum()) > cfg.n_hidden


def test_main_command_fast(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["train", "--fast", "--steps", "40", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for label in ("FVU", "loss increase", "dead latents", "MMCS", "topk", "gradient_topk"):
        assert label in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["saes"]) == {"topk", "gradient_topk"}
    assert 0 < results["saes"]["topk"]["fvu"] < 1
    assert (out / "topk" / "sae.safetensors").is_file() and (out / "toy_model" / "toy_model.json").is_file()
    pytest.importorskip("matplotlib")
    assert (out / "summary.png").stat().st_size > 1000
    # saekit eval on the toy model the run saved gives the same numbers
    assert main(["eval", "--sae", str(out / "topk"), "--model", str(out / "toy_model"), "--batch-size", "256",
                 "--eval-batches", "8",                  "--json", str(tmp_path / "e.json")]) == 0
    again = json.loads((tmp_path / "e.json").read_text())["topk"]
    assert again["fvu"] == pytest.approx(results["saes"]["topk"]["fvu"])
