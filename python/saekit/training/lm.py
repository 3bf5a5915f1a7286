"""``saekit train --model ...``: SAEs on a language model's activations, then evaluated with
the SAE spliced into the model (same table and plot as the toy default).

Under torchrun (``ctx``) every rank loads the model on its device and reads its data rank's
batches; with latent parallelism above 1 each rank initialises only its own latent slice
(build_sharded), so an SAE too large for one device never exists whole. The ranks save the
final SAEs together (one file per latent shard) and rank 0 evaluates them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from saekit.nn import GradientTopKSAE, TopKSAE
from saekit.training.activations import HookedActivationSource, find_module
from saekit.training.data import TextDocuments, TokenStream
from saekit.training.hf import check_seq_len, default_device, load_causal_lm
from saekit.training.parallel import save_final_saes, shard_saes
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


def build_distributed_saes(archs, d: int, ctx, *, n_latents: int, k: int, k_aux: int, beta: float, seed: int,
                           extra: dict) -> dict:
    """This rank's sharded SAEs: with one latent rank, build_lm_saes's weights sharded (a job
    starts where a one-process run would); with more, each rank initialises its own slice
    (unit-norm random decoder rows seeded by ``seed`` and the slice, tied encoder)."""
    from saekit.distributed.sharded_sae import build_sharded
    from saekit.nn import SAEConfig

    if ctx.layout.latent == 1:
        saes = build_lm_saes(archs, d, n_latents=n_latents, k=k, k_aux=k_aux, beta=beta, seed=seed,
                             device=ctx.device, extra=extra)
        return shard_saes(saes, ctx)
    if k > n_latents:
        raise ValueError(f"--k {k} is larger than --n-latents {n_latents}")
    saes = {}
    for name in archs:
        cfg = SAEConfig(d, n_latents, k, architecture=name, k_aux=k_aux, beta=beta)
        saes[name] = build_sharded(cfg, group=ctx.latent_group, device=ctx.device, init_seed=seed)
        saes[name].cfg.extra = dict(extra)
    return saes


def train_lm(args, ctx=None) -> int:
    """``saekit train --model``; ``ctx``: a DistributedContext under torchrun, else None."""
    from saekit.cli import EXIT_INTERRUPTED, _apply_train_flags, _archs, _interrupted, _plot, _set_threads
    from saekit.eval.report import format_table
    from saekit.eval.splice import evaluate_spliced

    _set_threads(args.threads)
    if not args.hook:
        raise ValueError("--hook is required with --model (the module whose output to train on)")
    if not args.data:
        raise ValueError("--data is required with --model (a .txt/.jsonl file or directory, or hf:NAME)")
    archs = _archs(args)
    main = ctx is None or ctx.is_main
    device = default_device(args.device) if ctx is None else ctx.device
    t0 = time.perf_counter()
    model, tokenizer = load_causal_lm(args.model, device=device, dtype=args.model_dtype)
    find_module(model, args.hook)
    docs = TextDocuments(args.data, text_field=args.text_field or "text")
    stream = TokenStream(docs, tokenizer, seq_len=args.seq_len or 128, batch_size=args.batch_size or 8)
    check_seq_len(model, stream.seq_len)
    source = HookedActivationSource(model, args.hook, stream, need_grad="gradient_topk" in archs, device=device)
    d = source.d_in
    n_latents = args.n_latents or 16 * d
    extra = {"model": args.model, "hook": args.hook, "data": args.data, "seq_len": stream.seq_len}
    sizes = dict(n_latents=n_latents, k=args.k or 32, k_aux=args.k_aux or 512,
                 beta=1.0 if args.beta is None else args.beta, seed=args.seed or 0, extra=extra)
    if ctx is None:
        saes = build_lm_saes(archs, d, device=device, **sizes)
    else:
        saes = build_distributed_saes(archs, d, ctx, **sizes)
    steps = args.steps or 1000
    cfg = TrainConfig(steps=steps, warmup_steps=min(100, steps // 10), log_every=max(1, min(10, steps // 20)),
                      checkpoint_every=500)
    _apply_train_flags(cfg, args)
    out = Path(args.out or "runs/lm")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps({**extra, "archs": archs, "n_latents": n_latents,
                                                  "train": cfg.to_dict()}, indent=2) + "\n")
        where = device if ctx is None else f"{ctx.world} ranks ({ctx.layout.data} data x {ctx.layout.latent} latent)"
        print(f"saekit train: {args.model} at {args.hook} (d={d}), SAEs {', '.join(archs)} with M={n_latents}, "
              f"k={saes[archs[0]].k}; {steps} steps of {stream.batch_size}x{stream.seq_len} tokens"
              f"{'' if ctx is None else ' per data rank'} on {where} -> {out}", flush=True)
    trainer = Trainer(saes, source, cfg, out, ctx=ctx)
    if not args.no_resume and trainer.resume() and main:
        print(f"resumed from {trainer._resumed_from} (step {trainer.step})", flush=True)
    result = trainer.train()
    if result.interrupted:
        return _interrupted(result.checkpoint) if main else EXIT_INTERRUPTED
    saes = save_final_saes(saes, out, ctx, device=device)
    if saes is None:  # a rank other than 0
        return 0
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
