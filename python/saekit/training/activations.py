"""Activations (and g-SAE gradients) of any torch module, captured by a forward hook.

Gradient convention: the loss is the model's next-token cross-entropy **summed** over every
predicted token of the batch (positions 0..T-2 of each sequence). Its gradient with respect to
the activation at token t is then the gradient of the sum of the losses that token t
influences, and does not change when other sequences are added to the batch: ``beta`` means
the same at any batch size. (A mean would divide every gradient by the number of tokens.)
The last position of each sequence predicts nothing, so its gradient is zero and a g-SAE
selects there exactly as TopK does. With the g-SAE's default ``grad_norm="token"`` each row is
normalised anyway, so only its direction matters.

The gradient comes from the unmodified model in the same forward pass that collects the
activation: the hooked output is replaced by a detached copy that requires grad, the model's
weights do not require grad, so the backward pass stops at the hook and builds no weight
gradients. Without gradients the forward pass stops at the hook.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager

import torch
from torch import nn

from saekit.training.source import ActivationBatch


class _StopForward(Exception):
    pass


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; ValueError listing the available names otherwise."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    shown = ", ".join(names[:300]) + (f", ... ({len(names) - 300} more)" if len(names) > 300 else "")
    hint = f"\nclosest matches: {', '.join(close[:10])}" if close else ""
    raise ValueError(f"unknown hook point {name!r}; the model's modules are:\n{shown}{hint}")


def _first(output):
    """The activation tensor of a module output (a tensor, or the first item of a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ValueError(f"the hooked module returned {type(output).__name__}, not a tensor or a tuple starting "
                     "with one; hook another module")


def _replace_first(output, new):
    if isinstance(output, torch.Tensor):
        return new
    return type(output)((new, *output[1:]))


@contextmanager
def replace_output(module: nn.Module, fn):
    """Within the block, ``module``'s output activation a [..., d] is replaced by fn(a)."""
    handle = module.register_forward_hook(lambda mod, args, out: _replace_first(out, fn(_first(out))))
    try:
        yield
    finally:
        handle.remove()


def logits_of(output) -> torch.Tensor:
    """[B, T, V] next-token logits from a model output (``.logits`` or a bare tensor)."""
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError("the model has no language-modeling head: its output has no [batch, seq, vocab] "
                         "logits (load a causal LM, e.g. with AutoModelForCausalLM)")
    return logits


def next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy of logits [B, T, V] at positions 0..T-2 against input_ids[:, 1:]."""
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(),
                                       reduction=reduction)


def collect(model: nn.Module, module: nn.Module, input_ids: torch.Tensor, *, need_grad: bool,
            return_logits: bool = False):
    """One pass over ``input_ids`` [B, T]: ActivationBatch(x [B*T, d], grad [B*T, d] or None),
    plus the logits [B, T, V] when ``return_logits`` (which needs the full forward pass).

    grad is d(sum of next-token CE over the batch) / dx, from the unmodified model.
    """
    captured = {}

    def hook(mod, args, out):
        act = _first(out)
        if need_grad:
            leaf = act.detach().requires_grad_(True)
            captured["x"] = leaf
            return _replace_first(out, leaf)
        captured["x"] = act.detach()
        if not return_logits:
            raise _StopForward
        return None

    handle = module.register_forward_hook(hook)
    logits = None
    try:
        with torch.set_grad_enabled(need_grad):
            try:
                logits = logits_of(model(input_ids))
            except _StopForward:
                pass
    finally:
        handle.remove()
    if "x" not in captured:
        raise ValueError("the hooked module did not run during the forward pass")
    x = captured["x"]
    grad = None
    if need_grad:
        loss = next_token_ce(logits, input_ids, "sum")
        (grad,) = torch.autograd.grad(loss, x)
        x = x.detach()
        logits = logits.detach()
    flat = lambda t: t.reshape(-1, t.shape[-1]) if t is not None else None  # noqa: E731
    batch = ActivationBatch(flat(x), flat(grad))
    return (batch, logits) if return_logits else batch


class HookedActivationSource:
    """An ActivationSource over ``model``'s ``hook`` output on ``tokens`` (a TokenStream).

    Each ``next_batch()`` reads [B, T] tokens and returns x [B*T, d] as float32 (and grad when
    ``need_grad``). The model is put in eval mode with ``requires_grad_(False)``.
    """

    def __init__(self, model: nn.Module, hook: str, tokens, *, need_grad: bool = False, device=None):
        self.model = model.eval().requires_grad_(False)
        self.hook = hook
        self.module = find_module(model, hook)
        self.tokens = tokens
        self.need_grad = need_grad
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.d_in = self.probe_width()

    def probe_width(self) -> int:
        """d, from one forward pass on two tokens."""
        ids = torch.zeros(1, 2, dtype=torch.long, device=self.device)
        return collect(self.model, self.module, ids, need_grad=False).x.shape[-1]

    def next_batch(self) -> ActivationBatch:
        ids = self.tokens.next_batch().to(self.device)
        x, grad = collect(self.model, self.module, ids, need_grad=self.need_grad)
        return ActivationBatch(x.float(), grad.float() if grad is not None else None)

    def skip_batch(self) -> None:
        """Pass over one batch of tokens (another data-parallel rank's) without running the model."""
        self.tokens.next_batch()

    def state_dict(self) -> dict:
        return self.tokens.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.tokens.load_state_dict(state)
