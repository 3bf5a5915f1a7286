"""Loading Hugging Face causal LMs and tokenizers with errors that say what to do."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device(device=None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_causal_lm(name: str, *, device=None, dtype: str | None = None):
    """(model, tokenizer) for a Hugging Face causal LM ``name`` (hub name or local directory),
    in eval mode with ``requires_grad_(False)``, on ``device`` in ``dtype`` (default: float32
    on CPU, bfloat16 on CUDA). ValueError when transformers is missing, the model cannot be
    found or has no language-modeling head."""
    try:
        import transformers
    except ImportError:
        raise ValueError("--model needs the transformers package: pip install 'saekit[hf]' "
                         "(or omit --model for the toy model)") from None
    device = default_device(device)
    torch_dtype = DTYPES[dtype] if dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load model {name!r}: {e}".strip()) from None
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e) or "AutoModelForCausalLM" in str(e):
            raise ValueError(f"model {name!r} ({type(config).__name__}) has no causal language-modeling head, "
                             "so it gives no next-token loss; saekit needs a causal LM") from None
        raise ValueError(f"cannot load model {name!r}: {e}") from None
    except OSError as e:
        raise ValueError(f"cannot load model {name!r}: {e}") from None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the tokenizer of {name!r}: {e}") from None
    return model.to(device).eval().requires_grad_(False), tokenizer


POSITION_LIMITS = ("max_position_embeddings", "n_positions", "n_ctx")


def check_seq_len(model, seq_len: int) -> None:
    """ValueError naming --seq-len when sequences of seq_len tokens exceed the positions the
    model's config declares (an embedding lookup out of range otherwise)."""
    config = getattr(model, "config", None)
    for name in POSITION_LIMITS:
        limit = getattr(config, name, None)
        if isinstance(limit, int) and seq_len > limit:
            raise ValueError(f"--seq-len {seq_len} exceeds the model's {limit} positions (config.{name})")
