import json

import pytest

from saekit.cli import build_parser, main, parse_args
from tests.training.tiny_lm import make_tiny_lm, write_text


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    assert "toy model of superposition" in text and "--model" in text and "resume" in text


def test_config_file_with_flags_overriding(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('steps = 7\nk = 3\narch = "topk"\nout = "x"\n')
    args = parse_args(["train", "--config", str(cfg), "--steps", "9"])
    assert (args.steps, args.k, args.arch, args.out) == (9, 3, "topk", "x")


def _config_error(tmp_path, capsys, toml: str) -> str:
    """What `saekit train --config` with this TOML prints when it refuses it."""
    cfg = tmp_path / "run.toml"
    cfg.write_text(toml)
    with pytest.raises(SystemExit):
        parse_args(["train", "--config", str(cfg)])
    return capsys.readouterr().err


def test_bad_config_and_flags(tmp_path, capsys):
    assert "unknown key 'stepz'" in _config_error(tmp_path, capsys, "stepz = 7\n")
    assert main(["train", "--fast", "--arch", "relu", "--out", str(tmp_path)]) == 2
    assert "unknown architecture 'relu'" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["train", "--steps", "0"], "--steps must be an integer of at least 1, got 0"),
    (["train", "--batch-size", "0"], "--batch-size must be an integer of at least 1, got 0"),
    (["train", "--threads", "0"], "--threads must be an integer of at least 1"),
    (["train", "--k-aux", "-1"], "--k-aux must be an integer of at least 0, got -1"),
    (["eval", "--sae", "x", "--eval-batches", "0"], "--eval-batches must be an integer of at least 1"),
    (["train", "--checkpoint-every", "-1"], "--checkpoint-every must be an integer of at least 0, got -1"),
])
def test_zero_or_negative_counts_are_errors_not_defaults(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_counts_from_a_config_file_are_checked_too(tmp_path, capsys):
    message = "--steps must be an integer of at least 1, got '10'"
    assert message in _config_error(tmp_path, capsys, 'steps = "10"\n')


def test_checkpoint_every_zero_is_allowed():
    assert parse_args(["train", "--checkpoint-every", "0"]).checkpoint_every == 0  # --help: "0: only those"


def test_seq_len_beyond_the_models_positions_is_named(tmp_path, capsys):
    pytest.importorskip("transformers")
    make_tiny_lm(tmp_path / "lm")  # 64 positions
    write_text(tmp_path / "corpus.txt")
    common = ["--model", str(tmp_path / "lm"), "--hook", "transformer.h.0", "--data", str(tmp_path / "corpus.txt"),
              "--seq-len", "65"]
    assert main(["train", *common, "--steps", "1", "--out", str(tmp_path / "run")]) == 2
    assert "--seq-len 65 exceeds the model's 64 positions" in capsys.readouterr().err


def test_train_on_a_language_model_then_resume_and_eval(tmp_path, capsys):
    pytest.importorskip("transformers")
    make_tiny_lm(tmp_path / "lm")
    data = write_text(tmp_path / "data.txt")
    out = tmp_path / "run"
    common = ["--model", str(tmp_path / "lm"), "--hook", "transformer.h.0", "--data", str(data), "--out", str(out),
              "--seq-len", "16", "--batch-size", "4", "--n-latents", "64", "--k", "4", "--k-aux", "8",
              "--no-progress", "--no-plot", "--eval-batches", "2", "--lr", "3e-3"]
    assert main(["train", *common, "--steps", "30"]) == 0
    results = json.loads((out / "results.json").read_text())["saes"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for name in ("topk", "gradient_topk"):
        assert records[-1][f"{name}/fvu"] < records[0][f"{name}/fvu"]
        assert {"kl", "loss_recovered", "dead_frac", "dense_frac"} <= results[name].keys()
    assert main(["train", *common, "--steps", "35"]) == 0  # continues from step 30
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["steps"] == 35
    assert main(["eval", "--sae", str(out / "topk"), "--eval-batches", "1", "--batch-size", "2"]) == 0
    assert "KL(clean || spliced)" in capsys.readouterr().out
    assert main(["eval", "--sae", str(out / "topk"), "--hook", "transformer.h.9"]) == 2
    assert "transformer.h.0.attn" in capsys.readouterr().err

    # The same SAE exported to SAELens and sparsify checkpoints evaluates to the same numbers.
    from saekit import formats

    sae = formats.load(out / "topk")
    formats.save(sae, tmp_path / "saelens", format="saelens")
    formats.save(sae, tmp_path / "sparsify", format="sparsify")
    context = ["--model", str(tmp_path / "lm"), "--hook", "transformer.h.0", "--data", str(data),
               "--seq-len", "16", "--eval-batches", "1", "--batch-size", "2"]
    assert main(["eval", "--sae", str(out / "topk"), "--sae", str(tmp_path / "saelens"), "--sae",
                 str(tmp_path / "sparsify"), *context, "--json", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert set(evaluated) == {"topk", "saelens", "sparsify"}
    for name in ("saelens", "sparsify"):
        for metric in ("fvu", "kl", "loss_recovered"):
            assert evaluated[name][metric] == pytest.approx(evaluated["topk"][metric], rel=1e-4, abs=1e-6), metric


def test_eval_rejects_an_sae_of_another_width(tmp_path, capsys):
    pytest.importorskip("transformers")
    from saekit.nn import TopKSAE

    make_tiny_lm(tmp_path / "lm")
    TopKSAE(16, 32, 4).save(tmp_path / "sae")
    args = ["eval", "--sae", str(tmp_path / "sae"), "--model", str(tmp_path / "lm"), "--hook", "transformer.h.0",
            "--data", str(write_text(tmp_path / "d.txt")), "--seq-len", "32"]
    assert main(args) == 2
    assert "d_in = 16" in capsys.readouterr().err
