"""``saekit eval``: metrics of saved SAEs on a language model (or on the toy model a toy run
saved), printed as one table with a column per SAE."""

from __future__ import annotations

import json
from pathlib import Path



def _load_saes(dirs, device) -> dict:
    """SAEs from checkpoint directories of any format saekit reads (saekit, SAELens, sparsify),
    in float32, and what their configs say of the model, hook and data they were trained on."""
    from saekit import formats

    if not dirs:
        raise ValueError("--sae is required: a saekit, SAELens or sparsify checkpoint directory (repeatable)")
    saes, extras = {}, {}
    for d in dirs:
        path = Path(d)
        name = path.name or str(path)
        while name in saes:
            name += "'"
        saes[name] = formats.load(path, device=device).float()
        extras[name] = training_context(saes[name].cfg.extra)
    return saes, extras


def training_context(extra: dict) -> dict:
    """What saekit recorded in a checkpoint's config of the run that trained it (model, hook,
    data, seq_len, ...). SAELens' model_name / hook_name are TransformerLens names, not Hugging
    Face ones, and sparsify records none: such checkpoints need --model, --hook and --data."""
    return {key: value for key, value in extra.items() if key not in ("saelens", "sparsify")}


def _default(value, extras: dict, key: str, flag: str):
    """A flag's value, else the one every SAE's cfg.json agrees on, else an error."""
    if value is not None:
        return value
    found = {e.get(key) for e in extras.values()} - {None}
    if len(found) == 1:
        return found.pop()
    raise ValueError(f"{flag} is required (the SAEs' cfg.json do not name one{'' if not found else ' in common'})")


def _eval_toy(model_dir: Path, saes: dict, args) -> dict:
    from saekit.toy.experiment import ToyExperiment, evaluate_toy
    from saekit.toy.model import load_toy_model

    model = load_toy_model(model_dir)
    exp = ToyExperiment(toy=model.cfg, seed=args.seed or 0)
    if args.batch_size:
        exp.batch_size = args.batch_size
    exp.eval_rows = exp.batch_size * (16 if args.eval_batches is None else args.eval_batches)
    for name, sae in saes.items():
        if sae.d_in != model.cfg.n_hidden:
            raise ValueError(f"SAE {name!r} has d_in = {sae.d_in} but the toy model's hidden width is "
                             f"{model.cfg.n_hidden}")
    return {name: evaluate_toy(model, sae, exp) for name, sae in saes.items()}


def eval_command(args) -> int:
    from saekit.cli import _set_threads
    from saekit.eval.report import format_table

    _set_threads(args.threads)
    from saekit.training.hf import default_device

    device = default_device(args.device)
    saes, extras = _load_saes(args.sae, device)
    model_name = _default(args.model, extras, "model", "--model")
    if model_name is not None and (Path(model_name) / "toy_model.json").is_file():
        results = _eval_toy(Path(model_name), saes, args)
        title = f"toy model {model_name}"
    else:
        results, title = _eval_lm(model_name, saes, extras, args, device)
    print(format_table(results, title=title))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {args.json}")
    return 0


def _eval_lm(model_name: str, saes: dict, extras: dict, args, device):
    from saekit.eval.splice import evaluate_spliced
    from saekit.training.activations import HookedActivationSource
    from saekit.training.data import TextDocuments, TokenStream
    from saekit.training.hf import check_seq_len, load_causal_lm

    hook = _default(args.hook, extras, "hook", "--hook")
    data = _default(args.data, extras, "data", "--data")
    model, tokenizer = load_causal_lm(model_name, device=device, dtype=args.model_dtype)
    seq_len = args.seq_len or next((e["seq_len"] for e in extras.values() if "seq_len" in e), 128)
    check_seq_len(model, seq_len)
    stream = TokenStream(TextDocuments(data, text_field=args.text_field or "text"), tokenizer, seq_len=seq_len,
                         batch_size=args.batch_size or 8)
    source = HookedActivationSource(model, hook, stream, device=device)
    for name, sae in saes.items():
        if sae.d_in != source.d_in:
            raise ValueError(f"SAE {name!r} has d_in = {sae.d_in} but {model_name} at {hook} has width "
                             f"{source.d_in}: the SAE was trained on another model or hook point")
    n = 20 if args.eval_batches is None else args.eval_batches
    batches = (stream.next_batch().to(device) for _ in range(n))
    results = evaluate_spliced(model, source.module, saes, batches)
    tokens = next(iter(results.values()))["tokens"]
    return results, f"{model_name} at {hook}: {tokens} predicted tokens of {data} (losses: next-token CE in nats)"
