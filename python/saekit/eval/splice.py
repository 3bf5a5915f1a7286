"""The downstream effect of splicing SAEs into a language model.

For each batch of tokens [B, T], three forward passes of the model: clean, with the hooked
activation replaced by each SAE's reconstruction, and with it zero-ablated. Over the predicted
positions 0..T-2 of every sequence:

    CE      = mean next-token cross-entropy (clean, spliced, zero-ablated)
    KL      = mean over positions of KL(p_clean || p_spliced) of the next-token distributions
    loss_recovered = (CE_zero - CE_spliced) / (CE_zero - CE_clean)
"""

from __future__ import annotations

import torch
from torch import nn

from saekit.eval.metrics import ReconstructionMetrics, downstream_summary
from saekit.nn import GradientTopKSAE
from saekit.training.activations import collect, logits_of, next_token_ce, replace_output


def _kl_sum(logits_clean: torch.Tensor, logits_other: torch.Tensor) -> torch.Tensor:
    """Sum over positions 0..T-2 of KL(softmax(clean) || softmax(other)), in float32."""
    lp = torch.log_softmax(logits_clean[:, :-1].float(), -1)
    lq = torch.log_softmax(logits_other[:, :-1].float(), -1)
    return (lp.exp() * (lp - lq)).sum()


@torch.no_grad()
def _run_with(model, module, input_ids, fn) -> torch.Tensor:
    with replace_output(module, fn):
        return logits_of(model(input_ids))


def evaluate_spliced(model: nn.Module, module: nn.Module, saes: dict, batches, *, dense_threshold: float = 0.1) -> dict:
    """Metrics of every SAE in ``saes`` ({name: SAE}) over ``batches`` (an iterable of token
    ids [B, T] on the model's device).

    Returns {name: dict(fvu, l0, dead_frac, dense_frac, loss_clean, loss_spliced, loss_zero,
    loss_increase, kl, loss_recovered, tokens)} where the losses are next-token CE in nats.
    g-SAEs select with the clean model's gradients (summed CE, as in training).
    """
    need_grad = any(isinstance(s, GradientTopKSAE) for s in saes.values())
    recon = {name: ReconstructionMetrics(s.n_latents, dense_threshold=dense_threshold) for name, s in saes.items()}
    sums = {name: {"spliced": 0.0, "kl": 0.0} for name in saes}
    clean = zero = 0.0
    predicted = 0
    for input_ids in batches:
        (x, grad), logits = collect(model, module, input_ids, need_grad=need_grad, return_logits=True)
        shape = (*input_ids.shape, x.shape[-1])
        predicted += input_ids.shape[0] * (input_ids.shape[1] - 1)
        clean += next_token_ce(logits, input_ids).item()
        zero += next_token_ce(_run_with(model, module, input_ids, torch.zeros_like), input_ids).item()
        for name, sae in saes.items():
            with torch.no_grad():
                xs = x.to(sae.W_enc.dtype)
                out = sae(xs, grad.to(xs.dtype)) if isinstance(sae, GradientTopKSAE) else sae(xs)
            recon[name].update(xs, out.x_hat, out.code)
            x_hat = out.x_hat.reshape(shape)
            spliced_logits = _run_with(model, module, input_ids, lambda a: x_hat.to(a.dtype))
            sums[name]["spliced"] += next_token_ce(spliced_logits, input_ids).item()
            sums[name]["kl"] += _kl_sum(logits, spliced_logits).item()
    if predicted == 0:
        raise ValueError("no tokens were evaluated (empty dataset, or --eval-batches 0)")
    results = {}
    for name in saes:
        down = downstream_summary(clean / predicted, sums[name]["spliced"] / predicted, zero / predicted)
        results[name] = {**recon[name].compute(), **down, "kl": sums[name]["kl"] / predicted, "tokens": predicted}
    return results
