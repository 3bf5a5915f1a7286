"""``saekit train --model ...``: SAEs on a language model's activations, then evaluated with
the SAE spliced into the model (same table and plot as the toy default)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from saekit.io import save_sae
from saekit.nn import GradientTopKSAE, TopKSAE
from saekit.training.activations import HookedActivationSource, find_module
from saekit.training.data import TextDocuments, TokenStream
from saekit.training.hf import default_device, load_causal_lm
from saekit.training.trainer import TrainConfig, Trainer


def build_lm_saes(archs, d: int, *, n_latents: int, k: int, k_aux: int, beta: float, seed: int,
                  device, extra: dict) -> dict:
    """The SAEs to train, all from the same seeded initial weights; ``extra`` (model, hook, data)
    is stored in each cfg.json so that ``saekit eval`` finds them."""
    if k > n_latents:
        raise ValueError(f"--k {k} is larger than --n-latents {n_latents}")
    saes = {}
    for name in archs:
        torch.manual_seed(seed)
        if name == "gradient_topk":
            sae = GradientTopKSAE(d, n_latents, k, k_aux=k_aux, beta=beta, device=device)
        else:
            sae = TopKSAE(d, n_latents, k, k_aux=k_aux, device=device)
        sae.cfg.extra = dict(extra)
        saes[name] = sae
    return saes


def train_lm(args) -> int:
    from saekit.cli import _apply_train_flags, _archs, _interrupted, _plot, _set_threads
    from saekit.eval.report import format_table
    from saekit.eval.splice import evaluate_spliced

    _set_threads(args.threads)
    if not args.hook:
        raise ValueError("--hook is required with --model (the module whose output to train on)")
    if not args.data:
        raise ValueError("--data is required with --model (a .txt/.jsonl file or directory, or hf:NAME)")
    archs = _archs(args)
    device = default_device(args.device)
    t0 = time.perf_counter()
    model, tokenizer = load_causal_lm(args.model, device=device, dtype=args.model_dtype)
    find_module(model, args.hook)
    docs = TextDocuments(args.data, text_field=args.text_field or "text")
    stream = TokenStream(docs, tokenizer, seq_len=args.seq_len or 128, batch_size=args.batch_size or 8)
    source = HookedActivationSource(model, args.hook, stream, need_grad="gradient_topk" in archs, device=device)
    d = source.d_in
    n_latents = args.n_latents or 16 * d
    extra = {"model": args.model, "hook": args.hook, "data": args.data, "seq_len": stream.seq_len}
    saes = build_lm_saes(archs, d, n_latents=n_latents, k=args.k or 32, k_aux=args.k_aux or 512,
                         beta=1.0 if args.beta is None else args.beta, seed=args.seed or 0, device=device,
                         extra=extra)
    steps = args.steps or 1000
    cfg = TrainConfig(steps=steps, warmup_steps=min(100, steps // 10), log_every=max(1, min(10, steps // 20)),
                      checkpoint_every=500)
    _apply_train_flags(cfg, args)
    out = Path(args.out or "runs/lm")
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({**extra, "archs": archs, "n_latents": n_latents,
                                              "train": cfg.to_dict()}, indent=2) + "\n")
    print(f"saekit train: {args.model} at {args.hook} (d={d}), SAEs {', '.join(archs)} with M={n_latents}, "
          f"k={saes[archs[0]].k}; {steps} steps of {stream.batch_size}x{stream.seq_len} tokens on {device} -> {out}",
          flush=True)
    trainer = Trainer(saes, source, cfg, out)
    if not args.no_resume and trainer.resume():
        print(f"resumed from {trainer._resumed_from} (step {trainer.step})", flush=True)
    result = trainer.train()
    if result.interrupted:
        return _interrupted(result.checkpoint)
    for name, sae in saes.items():
        save_sae(sae, out / name)
    n_eval = 10 if args.eval_batches is None else args.eval_batches
    eval_stream = TokenStream(docs, tokenizer, seq_len=stream.seq_len, batch_size=stream.batch_size)
    eval_stream.load_state_dict(stream.state_dict())  # the tokens after those trained on
    batches = (eval_stream.next_batch().to(device) for _ in range(n_eval))
    metrics = evaluate_spliced(model, source.module, saes, batches)
    results = {"model": args.model, "hook": args.hook, "steps": result.step, "tokens": result.tokens,
               "saes": metrics, "seconds": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(metrics, title=f"\nevaluation on {next(iter(metrics.values()))['tokens']} predicted tokens "
                                      "after the training position (losses: next-token CE in nats)"))
    if not args.no_plot:
        _plot(out, results)
    print(f"results: {out / 'results.json'}  ({results['seconds']:.1f} s)")
    return 0
