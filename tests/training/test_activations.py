import pytest
import torch

from saekit.training.activations import HookedActivationSource, collect, find_module
from tests.training.tiny_lm import make_tiny_lm

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_lm")
    make_tiny_lm(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    return path, model


def ids(batch=2, seq=12, seed=0):
    return torch.randint(2, 40, (batch, seq), generator=torch.Generator().manual_seed(seed))


def direct(path, hook_layer, input_ids):
    """Activation after block ``hook_layer`` and d(sum of next-token CE)/d(activation) by
    plain autograd through a model whose weights require grad (no hooks)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    out = model(input_ids, output_hidden_states=True)
    h = out.hidden_states[hook_layer + 1]
    h.retain_grad()
    logits = out.logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             input_ids[:, 1:].reshape(-1), reduction="sum")
    loss.backward()
    return h.detach().reshape(-1, h.shape[-1]), h.grad.reshape(-1, h.shape[-1])


def test_activations_and_gradients_match_autograd(lm):
    path, model = lm
    input_ids = ids()
    x, grad = collect(model, find_module(model, "transformer.h.0"), input_ids, need_grad=True)
    x_ref, grad_ref = direct(path, 0, input_ids)
    assert x.shape == (24, 32)
    torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-7)
    assert grad.view(2, 12, 32)[:, -1].abs().max() == 0  # the last token predicts nothing
    x_only, none = collect(model, find_module(model, "transformer.h.0"), input_ids, need_grad=False)
    assert none is None and torch.equal(x_only, x)
    assert all(p.grad is None for p in model.parameters())


def test_gradient_of_a_token_does_not_depend_on_the_batch(lm):
    _, model = lm
    module = find_module(model, "transformer.h.1")
    both = ids(batch=3)
    _, g_batch = collect(model, module, both, need_grad=True)
    _, g_alone = collect(model, module, both[1:2], need_grad=True)
    torch.testing.assert_close(g_batch.view(3, 12, -1)[1], g_alone.view(12, -1), rtol=1e-4, atol=1e-7)


def test_source_and_bad_hook_points(lm):
    _, model = lm

    class Tokens:
        def next_batch(self):
            return ids(batch=2, seq=8)

        def state_dict(self):
            return {}

    source = HookedActivationSource(model, "transformer.h.1.mlp", Tokens(), need_grad=True)
    batch = source.next_batch()
    assert source.d_in == 32 and batch.x.shape == batch.grad.shape == (16, 32)
    with pytest.raises(ValueError, match=r"unknown hook point 'transformer.h.7'(.|\n)*transformer.h.0.attn"):
        HookedActivationSource(model, "transformer.h.7", Tokens())


def test_model_without_lm_head_is_a_clear_error(lm):
    path, _ = lm
    base = transformers.AutoModel.from_pretrained(path).eval()
    with pytest.raises(ValueError, match="no language-modeling head"):
        collect(base, find_module(base, "h.0"), ids(), need_grad=True)
