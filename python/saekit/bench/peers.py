"""The peer libraries as contenders, configured to compute saekit's TopK SAE function:
EleutherAI sparsify (``eai-sparsify``) and SAELens (``sae-lens``), when installed.

Both are loaded with the benchmark's weights (SAELens keeps W_enc as [d, M]: transposed here)
with the pre-encoder bias on and unit-norm decoder rows, so their outputs can be checked against
saekit's before anything is timed.
"""

from __future__ import annotations

import importlib.util

import torch

from saekit.bench.contenders import Contender, SparseCode, Unsupported, _grads, _leaf


def _missing(module: str, package: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"{package} is not installed (pip install {package})"
    return None


class SparsifyContender(Contender):
    """EleutherAI sparsify's SparseCoder (its encoder, decoder and their backward passes)."""

    name = "sparsify"

    def unavailable(self, device, dtype):
        return _missing("sparsify", "eai-sparsify")

    def setup(self, w):
        super().setup(w)
        from sparsify import SparseCoder, SparseCoderConfig

        M, d = w.W_enc.shape
        cfg = SparseCoderConfig(num_latents=M, k=w.k, activation="topk", normalize_decoder=True)
        self.sae = SparseCoder(d, cfg, device=w.W_enc.device, dtype=w.W_enc.dtype)
        with torch.no_grad():
            self.sae.encoder.weight.copy_(w.W_enc)
            self.sae.encoder.bias.copy_(w.b_enc)
            self.sae.W_dec.copy_(w.W_dec)
            self.sae.b_dec.copy_(w.b_dec)
        # sparsify picks its Triton decoder at import time whenever Triton is installed, and it
        # cannot run CPU tensors: on CPU use sparsify's own eager fallback (embedding_bag).
        from sparsify.utils import decoder_impl, eager_decode

        self.decoder_impl = decoder_impl if w.W_enc.is_cuda else eager_decode

    @torch.no_grad()
    def encode(self, x):
        out = self.sae.encode(x)
        return SparseCode(out.top_acts, out.top_indices)

    def decode(self, values, indices, grad_out):
        v, W, b = _leaf(values), _leaf(self.w.W_dec), _leaf(self.w.b_dec)
        x_hat = self.decoder_impl(indices, v, W.mT) + b
        x_hat.backward(grad_out)
        return x_hat, v.grad, W.grad, b.grad

    def train_step(self, x):
        self.sae.zero_grad(set_to_none=True)
        out = self.sae.encode(x)
        x_hat = self.decoder_impl(out.top_indices, out.top_acts, self.sae.W_dec.mT) + self.sae.b_dec  # = sae.decode
        loss = (x_hat.float() - x.float()).pow(2).sum(-1).mean()
        grads = _grads(loss, {"W_enc": self.sae.encoder.weight, "b_enc": self.sae.encoder.bias,
                              "W_dec": self.sae.W_dec, "b_dec": self.sae.b_dec})
        return loss.detach(), grads


class SAELensContender(Contender):
    """SAELens' TopK SAE (inference class for encode, training class for the training step)."""

    name = "sae-lens"

    def unavailable(self, device, dtype):
        return _missing("sae_lens", "sae-lens")

    def _build(self, training: bool):
        from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig

        w = self.w
        M, d = w.W_enc.shape
        common = dict(d_in=d, d_sae=M, k=w.k, dtype=str(w.W_enc.dtype).removeprefix("torch."),
                      device=str(w.W_enc.device), apply_b_dec_to_input=True)
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(**common)) if training else TopKSAE(TopKSAEConfig(**common))
        with torch.no_grad():
            sae.W_enc.copy_(w.W_enc.T)
            sae.b_enc.copy_(w.b_enc)
            sae.W_dec.copy_(w.W_dec)
            sae.b_dec.copy_(w.b_dec)
        return sae

    def setup(self, w):
        super().setup(w)
        self.sae = self._build(training=False)
        self.training_sae = None

    @torch.no_grad()
    def encode(self, x):
        return self.sae.encode(x)  # dense [N, M] feature activations

    def to_code(self, encoded):
        top = torch.topk(encoded, self.w.k, dim=-1)
        return SparseCode(top.values, top.indices)

    def decode(self, values, indices, grad_out):
        raise Unsupported("SAELens decodes dense feature activations [N, M] (see train_step)")

    def train_step(self, x):
        if self.training_sae is None:
            self.training_sae = self._build(training=True)
        sae = self.training_sae
        sae.zero_grad(set_to_none=True)
        feature_acts, _ = sae.encode_with_hidden_pre(x)
        x_hat = sae.decode(feature_acts)
        loss = (x_hat.float() - x.float()).pow(2).sum(-1).mean()
        grads = _grads(loss, {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec})
        grads["W_enc"] = grads["W_enc"].T
        return loss.detach(), grads
