"""A tiny GPT-2 and a character-level tokenizer built offline into a directory (no download)."""

from __future__ import annotations

import string

TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "sparse autoencoders find features in activations",
    "a small model of language, trained on nothing at all",
    "gradients tell which latents matter downstream",
] * 6


def make_tiny_lm(path, *, n_layer: int = 2, n_embd: int = 32, seed: int = 0):
    """Save a random GPT-2 (n_layer, n_embd, 2 heads) and a character tokenizer to ``path``;
    returns (model, tokenizer)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    chars = list(string.ascii_lowercase + string.digits + " .,'")
    vocab = {"<unk>": 0, "<eos>": 1} | {c: i + 2 for i, c in enumerate(chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=2, vocab_size=len(vocab),
                                  n_positions=64, eos_token_id=1, bos_token_id=1)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


def write_text(path, lines=TEXT):
    path.write_text("\n".join(lines) + "\n")
    return path
