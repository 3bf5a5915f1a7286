import pytest
import torch

from saekit.eval.splice import evaluate_spliced
from saekit.nn import GradientTopKSAE, TopKSAE
from saekit.training.activations import collect, find_module
from tests.training.tiny_lm import make_tiny_lm

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_lm")
    make_tiny_lm(path)
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval().requires_grad_(False)


def manual(model, input_ids, replacement):
    """Logits with block 1's input (= block 0's output) replaced, via a pre-hook on block 1."""
    def pre_hook(mod, args, kwargs):
        return (replacement.view_as(args[0]),) + args[1:], kwargs

    handle = model.transformer.h[1].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        return model(input_ids).logits
    finally:
        handle.remove()


def ce(logits, input_ids):
    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    return -logp.gather(-1, input_ids[:, 1:, None]).mean().item()


def kl(clean, other):
    p = torch.log_softmax(clean[:, :-1].double(), -1)
    q = torch.log_softmax(other[:, :-1].double(), -1)
    return (p.exp() * (p - q)).sum(-1).mean().item()


def test_spliced_ce_and_kl_match_a_manual_computation(model):
    torch.manual_seed(0)
    saes = {"topk": TopKSAE(32, 64, 4), "g": GradientTopKSAE(32, 64, 4, beta=2.0)}
    batches = [torch.randint(2, 40, (2, 10), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    results = evaluate_spliced(model, find_module(model, "transformer.h.0"), saes, batches)
    input_ids = torch.cat(batches)
    clean = model(input_ids).logits
    x, grad = collect(model, model.transformer.h[0], input_ids, need_grad=True)
    zero = manual(model, input_ids, torch.zeros_like(x))
    for name, sae in saes.items():
        x_hat = (sae(x, grad) if name == "g" else sae(x)).x_hat.detach()
        spliced = manual(model, input_ids, x_hat)
        r = results[name]
        assert r["tokens"] == 4 * 9
        assert r["loss_clean"] == pytest.approx(ce(clean, input_ids), rel=1e-5)
        assert r["loss_spliced"] == pytest.approx(ce(spliced, input_ids), rel=1e-5)
        assert r["loss_zero"] == pytest.approx(ce(zero, input_ids), rel=1e-5)
        assert r["kl"] == pytest.approx(kl(clean, spliced), rel=1e-4, abs=1e-7)
        expected = (r["loss_zero"] - r["loss_spliced"]) / (r["loss_zero"] - r["loss_clean"])
        assert r["loss_recovered"] == pytest.approx(expected)
        ss = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        assert r["fvu"] == pytest.approx(ss.item(), rel=1e-5)


def test_no_batches_is_a_clear_error(model):
    with pytest.raises(ValueError, match="no tokens"):
        evaluate_spliced(model, model.transformer.h[0], {"t": TopKSAE(32, 8, 2)}, [])
