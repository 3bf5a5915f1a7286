"""benchmarks/bench_gpu.py on tiny CPU shapes with the CPU backend: the code a GPU run executes,
so that a fault in it shows up here rather than in a scarce GPU call. Timings are not asserted."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_rows_and_table(bench_gpu, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEKIT_RESULTS_DIR", str(tmp_path))
    rows, md = bench_gpu.run(device="cpu", n=32, shapes=((16, 256, 4), (8, 64, 64)), backends=["cpu"], stem="smoke")
    assert [(r["d"], r["M"], r["k"], r["backend"]) for r in rows] == [(16, 256, 4, "cpu"), (8, 64, 64, "cpu")]
    for r in rows:
        assert r["encode_over_gemm"] > 0 and r["gsae_over_two_gemms"] > 0 and r["decode_bandwidth_fraction"] > 0
        assert r["skewed_decode_bandwidth_fraction"] > 0
        assert r["step_ms"] > 0 and r["reference_over_step"] > 0
    table = [line for line in md.splitlines() if line.startswith("| 16 |") or line.startswith("| 8 |")]
    assert len(table) == 2 and all(line.count("|") == 13 for line in table)
    saved = json.loads((tmp_path / "smoke.json").read_text())
    assert saved["rows"] == rows and (tmp_path / "smoke.md").read_text() == md
    assert saved["shapes_measured"] == "2 of 2"


def test_report_is_written_after_every_shape(bench_gpu, tmp_path, monkeypatch):
    """A run cut short by its stage's time limit keeps the shapes it finished."""
    monkeypatch.setenv("SAEKIT_RESULTS_DIR", str(tmp_path))
    shape_rows = bench_gpu.shape_rows

    def second_shape_dies(d, M, k, *args):
        if M == 64:
            raise KeyboardInterrupt  # what the stage's timeout does, as far as this run can tell
        return shape_rows(d, M, k, *args)

    monkeypatch.setattr(bench_gpu, "shape_rows", second_shape_dies)
    with pytest.raises(KeyboardInterrupt):
        bench_gpu.run(device="cpu", n=32, shapes=((16, 256, 4), (8, 64, 64)), backends=["cpu"], stem="cut")
    saved = json.loads((tmp_path / "cut.json").read_text())
    assert saved["shapes_measured"] == "1 of 2" and [r["M"] for r in saved["rows"]] == [256]


def test_out_of_memory_is_reported_not_raised(bench_gpu, monkeypatch):
    import torch

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("pretend")

    monkeypatch.setattr(bench_gpu.common, "bench", no_memory)
    assert bench_gpu.sae_step(torch.randn(4, 8).bfloat16(), 16, 2, "reference") is None
    assert bench_gpu._ratio(None) == "out of memory"


def test_serial_variant_sets_and_restores_the_overlap_switch(bench_gpu, monkeypatch):
    import os

    monkeypatch.delenv("SAEKIT_CUDA_ENCODE_OVERLAP", raising=False)
    with bench_gpu.variant(bench_gpu.SERIAL) as backend:
        assert backend == "cuda" and os.environ["SAEKIT_CUDA_ENCODE_OVERLAP"] == "0"
    assert "SAEKIT_CUDA_ENCODE_OVERLAP" not in os.environ
    monkeypatch.setenv("SAEKIT_CUDA_ENCODE_OVERLAP", "1")
    with bench_gpu.variant(bench_gpu.SERIAL):
        pass
    assert os.environ["SAEKIT_CUDA_ENCODE_OVERLAP"] == "1"
    with bench_gpu.variant("triton") as backend:
        assert backend == "triton" and os.environ["SAEKIT_CUDA_ENCODE_OVERLAP"] == "1"


def test_goal_misses_names_each_missed_goal(bench_gpu):
    row = dict(encode_over_gemm=1.10, gsae_over_two_gemms=1.20, decode_bandwidth_fraction=0.65)
    assert bench_gpu.goal_misses(row) == "g-SAE 1.20; decode 0.65"
    row.update(gsae_over_two_gemms=1.15, decode_bandwidth_fraction=0.70)
    assert bench_gpu.goal_misses(row) == "all met"
