"""``saekit`` command line: ``saekit train``, ``saekit eval`` and ``saekit bench``.

``saekit train`` with no ``--model`` runs the embedded default: a TopK SAE and a g-SAE trained
side by side on a toy model of superposition, evaluated and plotted (under a minute on CPU).
With ``--model`` (a Hugging Face name or local path) and ``--hook`` it trains on that model's
activations instead. Every flag can also come from a TOML file (``--config``), whose keys are
the flag names with underscores; flags on the command line win. Under ``torchrun`` (WORLD_SIZE set)
it trains on every rank: data parallel, and latent-sharded with ``--latent-parallel``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_INTERRUPTED = 130
EXIT_FAILED = 1

TRAIN_EPILOG = """\
examples:
  saekit train                                   # toy model of superposition, TopK vs g-SAE
  saekit train --fast                            # the same at a reduced size (seconds)
  saekit train --model gpt2 --hook transformer.h.6 --data corpus.txt --steps 5000
  saekit train --config run.toml --steps 200     # flags override the file

  torchrun --nproc-per-node 4 -m saekit train --latent-parallel 2 --fast
        # 4 processes: 2 data-parallel replicas, each SAE's latents sharded over 2 ranks
        # (gloo on CPU; add --model ... for a language model: nccl on GPUs)
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m saekit train --model gpt2 --hook transformer.h.6 --data corpus.txt --latent-parallel 8

distributed (torchrun): ranks form a data x latent grid, latent = --latent-parallel ranks that
share one SAE's latents (neighbours, i.e. one node), data = world / latent replicas that each
read their own batches (--batch-size is per replica; global batch = data x batch size). One
step equals a one-process step on the replicas' batches together. Rank 0 logs, shows progress
and writes results; checkpoints and the final SAEs hold one file per latent shard (--out must
be shared by all ranks) and load into any number of ranks or one process (saekit.io.load_sae);
resuming works across layouts. A rank that fails or hangs makes the others stop with an error
within --dist-timeout seconds (torchrun then ends the job) instead of hanging.

Ctrl-C (or SIGTERM) writes a checkpoint and exits with status 130; running the same command
again resumes from it exactly (--no-resume starts over). After a hard kill the run resumes
from its last periodic checkpoint (--checkpoint-every).

g-SAE gradients: d(next-token cross-entropy summed over the batch's tokens) / d(activation),
from the unmodified model in the same pass; each token's gradient is then independent of the
batch size, and the g-SAE normalises it per token (grad_norm="token") before weighting by beta.

config file (TOML, keys = flag names with underscores):
  model = "gpt2"
  hook = "transformer.h.6"
  data = "corpus.txt"
  arch = "topk,gradient_topk"
  n_latents = 16384
  k = 32
  steps = 5000
"""

EVAL_EPILOG = """\
examples:
  saekit eval --sae runs/lm/topk --sae runs/lm/gradient_topk --model gpt2 --data corpus.txt
  saekit eval --sae runs/toy/topk --model runs/toy/toy_model   # a toy model written by train
  saekit eval --sae saelens_dir --sae sparsify_run/layers.6 --model gpt2 --hook transformer.h.6 --data corpus.txt
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.toml", help="read options from a TOML file (flags override it)")
    p.add_argument("--model", help="Hugging Face causal LM name or local directory; omit for the toy model")
    p.add_argument("--hook", metavar="MODULE", help="module whose output is the activation, e.g. transformer.h.6 "
                   "(an unknown name lists the available ones)")
    p.add_argument("--data", metavar="PATH", help="text data: a .txt/.jsonl file or directory of them, or "
                   "hf:NAME[:SPLIT] for a `datasets` dataset")
    p.add_argument("--text-field", default=None, help="JSON / dataset field holding the text (default: text)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: 128)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences (LM) or rows (toy) per batch")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--model-dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="dtype of the language model (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--out", metavar="DIR", default=None, help="output directory (default: runs/toy or runs/lm)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice; "
                   "the toy run uses 1, fastest for its tiny matrices)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saekit", description="Train and evaluate TopK and gradient-TopK "
                                     "sparse autoencoders.")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,bench}")
    sub.required = True
    fmt = argparse.RawDescriptionHelpFormatter

    train = sub.add_parser("train", help="train SAEs (the toy default, or on a model's activations)",
                           description=__doc__.split("\n\n", 1)[1], epilog=TRAIN_EPILOG, formatter_class=fmt)
    _common(train)
    g = train.add_argument_group("SAE")
    g.add_argument("--arch", default=None, help="comma-separated architectures trained side by side on the same "
                   "batches: topk, gradient_topk (default: both)")
    g.add_argument("--n-latents", type=int, default=None, help="latents M (default: toy 128, LM 16 x d)")
    g.add_argument("--k", type=int, default=None, help="latents kept per token (default: toy 4, LM 32)")
    g.add_argument("--k-aux", type=int, default=None, help="AuxK latents (default: toy 32, LM 512)")
    g.add_argument("--beta", type=float, default=None, help="g-SAE gradient weight (default: 1.0, with "
                   "per-token normalised gradients)")
    t = train.add_argument_group("training")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default: toy 2000, LM 1000)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 2e-4 / sqrt(M / 2^14))")
    t.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps")
    t.add_argument("--decay", default=None, choices=["cosine", "linear", "constant"],
                   help="decay over the last 20%% of steps (default: cosine)")
    t.add_argument("--grad-accum", type=int, default=None, help="micro-batches per optimizer step (default: 1)")
    t.add_argument("--auxk-coef", type=float, default=None, help="AuxK loss coefficient (default: 1/32)")
    t.add_argument("--dead-tokens", type=int, default=None, help="tokens without firing before a latent is dead")
    t.add_argument("--autocast", default=None, choices=["auto", "bf16", "fp16", "none"],
                   help="autocast for the SAE (default: auto = bf16 on CUDA, none on CPU)")
    t.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints, besides the "
                   "end and Ctrl-C / SIGTERM (default: 500; 0: only those)")
    t.add_argument("--log", default=None, help="comma-separated: jsonl (always), wandb, tensorboard")
    t.add_argument("--log-every", type=int, default=None, help="steps between logged metrics")
    t.add_argument("--no-resume", action="store_true", default=None, help="ignore checkpoints in --out")
    t.add_argument("--no-progress", action="store_true", default=None, help="no progress bar")
    t.add_argument("--eval-batches", type=int, default=None, help="held-out batches for the final evaluation")
    t.add_argument("--fast", action="store_true", default=None, help="toy model at a reduced size (seconds)")
    t.add_argument("--no-plot", action="store_true", default=None, help="skip the PNG plot")
    dg = train.add_argument_group("distributed (under torchrun)")
    dg.add_argument("--latent-parallel", type=int, default=None, metavar="L", help="ranks that shard each SAE's "
                    "latents; data-parallel replicas = world size / L (default: 1, pure data parallelism)")
    dg.add_argument("--dist-backend", default=None, choices=["nccl", "gloo"],
                    help="torch.distributed backend (default: nccl with CUDA, gloo on CPU; the toy run uses gloo)")
    dg.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS", help="a collective waiting "
                    "longer for a failed or hung rank raises an error that ends the job (default: 600)")

    ev = sub.add_parser("eval", help="evaluate saved SAEs: FVU, L0, dead/dense latents, spliced CE and KL",
                        epilog=EVAL_EPILOG, formatter_class=fmt)
    _common(ev)
    ev.add_argument("--sae", action="append", default=None, metavar="DIR",
                    help="SAE checkpoint directory: saekit, SAELens or sparsify (detected); repeat to compare several")
    ev.add_argument("--eval-batches", type=int, default=None, help="batches to evaluate (default: 20; toy: 16 "
                    "batches of --batch-size rows, default 1024)")
    ev.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")

    # Listed here for --help; its arguments are parsed by saekit.bench.run (see main).
    sub.add_parser("bench", add_help=False, help="time saekit against dense torch, sparsify and SAELens "
                   "(saekit bench --help)")
    return parser


def _load_config(path: str, parser: argparse.ArgumentParser, sub: argparse.ArgumentParser) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError("--config needs Python 3.11+ (tomllib) or the tomli package") from None
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"--config {path}: cannot read ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"--config {path}: not valid TOML ({e})") from None
    known = {a.dest for a in sub._actions}
    values = {}
    for key, value in raw.items():
        dest = key.replace("-", "_")
        if dest not in known or dest in ("help", "config"):
            allowed = ", ".join(sorted(known - {"help", "config"}))
            raise ValueError(f"--config {path}: unknown key {key!r} (known: {allowed})")
        values[dest] = value
    return values


# Integer options and their least value; 0 or a negative count is an error, never "the default".
POSITIVE_INTS = ("steps", "batch_size", "seq_len", "n_latents", "k", "grad_accum", "eval_batches", "threads",
                 "log_every", "latent_parallel")
NON_NEGATIVE_INTS = ("k_aux", "warmup_steps", "dead_tokens", "seed", "checkpoint_every")


def _check_counts(args: argparse.Namespace) -> None:
    """ValueError naming the flag for a count (from the command line or --config) out of range."""
    for names, least in ((POSITIVE_INTS, 1), (NON_NEGATIVE_INTS, 0)):
        for name in names:
            value = getattr(args, name, None)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be an integer of at least {least}, got {value!r}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.config:
            sub = parser._subparsers._group_actions[0].choices[args.command]
            file_values = _load_config(args.config, parser, sub)
            for key, value in file_values.items():
                if getattr(args, key, None) is None:
                    setattr(args, key, value)
        _check_counts(args)
    except ValueError as e:
        parser.exit(2, f"saekit: error: {e}\n")
    return args


def _set_threads(n) -> None:
    import torch

    if n:
        torch.set_num_threads(int(n))


def train_toy(args, ctx=None) -> int:
    import torch

    from saekit.eval.report import format_table
    from saekit.toy.experiment import ToyExperiment, default_train_config, run_toy

    _set_threads(args.threads or 1)
    main = ctx is None or ctx.is_main
    exp = ToyExperiment.fast() if args.fast else ToyExperiment()
    for field_name in ("n_latents", "k", "k_aux", "beta", "batch_size", "seed"):
        if getattr(args, field_name) is not None:
            setattr(exp, field_name, getattr(args, field_name))
    cfg = default_train_config(args.steps or (300 if args.fast else 2000))
    _apply_train_flags(cfg, args)
    archs = _archs(args)
    out = Path(args.out or "runs/toy")
    if main:
        where = "" if ctx is None else (f", {ctx.world} ranks ({ctx.layout.data} data x {ctx.layout.latent} latent, "
                                        f"{exp.batch_size} rows per data rank)")
        print(f"saekit train: toy model of superposition ({exp.toy.n_features} features in {exp.toy.n_hidden} "
              f"dimensions), SAEs {', '.join(archs)} with M={exp.n_latents}, k={exp.k}; {cfg.steps} steps; "
              f"torch {torch.__version__}, {torch.get_num_threads()} thread(s){where} -> {out}", flush=True)
    results = run_toy(out, exp, cfg, architectures=archs, resume=not args.no_resume,
                      stream=None if not args.no_progress else sys.stderr, ctx=ctx)
    if results["interrupted"]:
        return _interrupted(results["checkpoint"]) if main else EXIT_INTERRUPTED
    if not main:
        return 0
    if results["resumed"]:
        print(f"(resumed from a checkpoint in {out / 'checkpoints'}; --no-resume starts over)")
    represented = next(iter(results["saes"].values()))["represented_features"]
    print(format_table(results["saes"], title=f"\nheld-out evaluation ({exp.eval_rows} rows; MMCS over the "
                                              f"{represented} features the toy model represents)"))
    if not args.no_plot:
        _plot(out, results)
    print(f"results: {out / 'results.json'}  ({results['seconds']:.1f} s)")
    return 0


def _plot(out: Path, results: dict) -> None:
    from saekit.eval.plot import plot_run

    try:
        print(f"plot: {plot_run(out, results)}")
    except ImportError as e:
        print(f"plot skipped: {e}")


def _interrupted(checkpoint) -> int:
    print(f"\ninterrupted: checkpoint written to {checkpoint}\n"
          "run the same command again to resume from it (add --no-resume to start over)", file=sys.stderr)
    return EXIT_INTERRUPTED


def _archs(args) -> tuple:
    value = args.arch or "topk,gradient_topk"
    if isinstance(value, (list, tuple)):
        value = ",".join(value)
    archs = tuple(a.strip() for a in value.split(",") if a.strip())
    for a in archs:
        if a not in ("topk", "gradient_topk"):
            raise ValueError(f"--arch: unknown architecture {a!r} (choose from topk, gradient_topk)")
    if len(set(archs)) != len(archs) or not archs:
        raise ValueError(f"--arch: give each architecture once, got {value!r}")
    return archs


def _apply_train_flags(cfg, args) -> None:
    """Copy the trainer flags that were given onto TrainConfig ``cfg``."""
    mapping = {"lr": "lr", "warmup_steps": "warmup_steps", "decay": "decay", "grad_accum": "grad_accum",
               "auxk_coef": "auxk_coef", "dead_tokens": "dead_threshold_tokens", "autocast": "autocast",
               "checkpoint_every": "checkpoint_every", "log_every": "log_every"}
    for flag, attr in mapping.items():
        if getattr(args, flag, None) is not None:
            setattr(cfg, attr, getattr(args, flag))
    if args.log:
        cfg.loggers = tuple(dict.fromkeys(["jsonl"] + [x.strip() for x in args.log.split(",") if x.strip()]))
    if args.no_progress:
        cfg.progress = False
    cfg.__post_init__()


def _distributed_context(args):
    """The DistributedContext of a run under torchrun (WORLD_SIZE set), else None; ValueError for
    distributed flags that cannot apply."""
    import os

    latent = 1 if args.latent_parallel is None else args.latent_parallel
    if isinstance(latent, bool) or not isinstance(latent, int) or latent < 1:
        raise ValueError(f"--latent-parallel must be a positive integer, got {latent!r}")
    if "WORLD_SIZE" not in os.environ:
        if latent > 1:
            raise ValueError(f"--latent-parallel {latent} needs {latent} or more processes: launch with "
                             f"torchrun --nproc-per-node N (N a multiple of {latent}) -m saekit train ...")
        return None
    from saekit.distributed.mesh import ParallelLayout, setup_distributed

    world = int(os.environ["WORLD_SIZE"])
    if world % latent:
        raise ValueError(f"--latent-parallel {latent} must divide the number of processes {world}")
    backend = args.dist_backend
    if args.model is None:
        if backend == "nccl":
            raise ValueError("the toy run (no --model) trains on CPU: use --dist-backend gloo")
        backend = "gloo"
    timeout = 600.0 if args.dist_timeout is None else float(args.dist_timeout)
    if not 0 < timeout < float("inf"):
        raise ValueError(f"--dist-timeout must be a positive number of seconds, got {args.dist_timeout!r}")
    ctx = setup_distributed(ParallelLayout.for_world(world, latent), timeout_s=timeout, backend=backend)
    if args.device is not None and args.model is not None and _device_type(args.device) != ctx.device.type:
        raise ValueError(f"--device {args.device} does not fit the {ctx.backend} backend, whose ranks run on "
                         f"{ctx.device.type} (choose --dist-backend {'gloo' if ctx.device.type == 'cuda' else 'nccl'}"
                         " or leave --device out: each rank then takes its own device)")
    return ctx


def _device_type(device: str) -> str:
    return device.split(":", 1)[0]


def train_command(args) -> int:
    """``saekit train``, in one process or (under torchrun) on every rank."""
    ctx = _distributed_context(args)
    if args.model is None:
        code = train_toy(args, ctx)
    else:
        from saekit.training.lm import train_lm

        code = train_lm(args, ctx)
    if ctx is not None:
        from saekit.distributed.mesh import teardown_distributed

        teardown_distributed()
    return code


def _rank_prefix() -> str:
    import os

    return f"rank {os.environ['RANK']}: " if "RANK" in os.environ and "WORLD_SIZE" in os.environ else ""


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from saekit.bench.run import main as bench_main

        return bench_main(argv[1:])
    args = parse_args(argv)
    try:
        if args.command == "train":
            return train_command(args)
        from saekit.eval.lm import eval_command

        return eval_command(args)
    except ValueError as e:
        from saekit.training.checkpoint import CheckpointError

        hint = " (start over with --no-resume or another --out)" if isinstance(e, CheckpointError) else ""
        print(f"saekit {args.command}: {_rank_prefix()}error: {e}{hint}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from saekit.distributed.timeouts import CollectiveError

        if not isinstance(e, CollectiveError):
            raise
        print(f"saekit {args.command}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
