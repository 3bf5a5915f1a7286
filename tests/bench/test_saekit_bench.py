"""``saekit bench --quick`` (the CLI subcommand) runs end to end on the CPU and writes a well-formed report in which
every contender was checked for agreement before it was timed (timings are never asserted)."""

import importlib.util
import json
import os
import subprocess
import sys

from saekit.bench.grid import CASES

PEERS = {"sparsify": "sparsify", "sae-lens": "sae_lens"}


def test_quick_report_structure_and_agreement(tmp_path):
    env = dict(os.environ, SAEKIT_RESULTS_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "saekit", "bench", "--quick", "--device", "cpu", "--repeats", "1",
                           "--sets", "2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench_quick_cpu.json").read_text())
    assert report["mode"] == "quick"
    assert {"date", "commit", "torch", "device", "saekit"} <= set(report["provenance"])
    rows = report["rows"]
    assert {r["M"] for r in rows} == {2048, 8192}
    contenders = {r["contender"] for r in rows}
    assert {"dense torch", "saekit[cpu]", "saekit[reference]", "sparsify", "sae-lens"} <= contenders
    for r in rows:
        assert r["case"] in CASES
        assert r["status"] == "ok" or r["status"].startswith(("unavailable:", "unsupported:")), r
        if r["status"] == "ok":
            assert r["agrees"] is True and r["rel_error_vs_dense"] <= 1e-3, r
            assert r["median_s"] > 0 and r["floor_s"] > 0
    saekit_rows = [r for r in rows if r["contender"] == "saekit[cpu]"]
    assert len(saekit_rows) == 2 * len(CASES) and all(r["status"] == "ok" for r in saekit_rows)
    for peer, module in PEERS.items():
        peer_rows = [r for r in rows if r["contender"] == peer]
        if importlib.util.find_spec(module) is None:
            assert all("not installed" in r["status"] for r in peer_rows)
        else:  # installed peers ran the cases they support, checked against the baseline
            assert any(r["status"] == "ok" and r["case"] == "train_step" for r in peer_rows), peer_rows
    md = (tmp_path / "bench_quick_cpu.md").read_text()
    assert "| case | contender | median ms |" in md and "## N=512, d=128, M=8192, k=16, float32" in md
