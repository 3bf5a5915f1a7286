"""The CPU benchmark runs end to end on a tiny shape and writes a well-formed report whose
outputs were checked for agreement (its timings are never asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_cpu_report(tmp_path):
    env = dict(os.environ, SAEKIT_RESULTS_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_cpu.py"), "--shape", "64", "16", "300", "4",
                           "--repeats", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "cpu_N64_d16_M300_k4.json").read_text())
    assert report["checks"] == {"selections_agree_with_reference": True, "decoders_agree": True}
    assert set(report["provenance"]) >= {"date", "commit", "torch", "device"}
    assert len(report["rows"]) == 8 and all(r["median_s"] > 0 for r in report["rows"])
    assert "topk_encode / gemm" in report["ratios"]
    assert "| ratio (same run) | value | goal |" in (tmp_path / "cpu_N64_d16_M300_k4.md").read_text()


def test_info_lists_every_backend():
    out = subprocess.run([sys.executable, "-m", "saekit.info"], capture_output=True, text=True, timeout=120).stdout
    assert "saekit._C: built against torch" in out
    for backend in ("reference", "cpu", "cuda", "triton"):
        assert f"  {backend}" in out
