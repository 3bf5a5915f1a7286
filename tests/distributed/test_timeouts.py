"""A rank that hangs or fails ends the job with a clear error within the timeout, not a hang."""

import subprocess
import sys
import time

import pytest
import torch
from saekit.distributed import ParallelLayout, setup_distributed
from torch.multiprocessing import ProcessRaisedException

from tests.distributed import workers

TIMEOUT_S = 2.0
# Spawning and importing torch in 2 processes takes a few seconds on a loaded machine.
DEADLINE_S = 30.0


def _run(mode):
    start = time.monotonic()
    with pytest.raises(ProcessRaisedException) as info:
        workers.spawn(workers.hang_or_crash, 2, mode, TIMEOUT_S)
    return str(info.value), time.monotonic() - start


def test_hung_rank_gives_a_clear_error_within_the_timeout():
    message, elapsed = _run("hang")
    assert "CollectiveError" in message
    assert "rank 0: all-gather of top-k candidates over ranks [0, 1] did not complete within the 2 s timeout" in message
    assert elapsed < DEADLINE_S


def test_barrier_names_the_missing_rank():
    message, elapsed = _run("barrier")
    assert "CollectiveError" in message and "step barrier" in message
    assert "Ranks 1 failed to pass monitoredBarrier" in message
    assert elapsed < DEADLINE_S


def test_failed_rank_ends_the_job():
    message, elapsed = _run("crash")
    assert "rank 1 fails on purpose" in message or "CollectiveError" in message
    assert elapsed < DEADLINE_S


def test_watchdog_ends_a_stuck_process():
    code = "import time; from saekit.distributed.timeouts import Watchdog; Watchdog(1.0); time.sleep(60)"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=DEADLINE_S)
    assert proc.returncode == 1
    assert "Timeout" in proc.stderr and "<string>" in proc.stderr  # the stuck line's stack
    assert time.monotonic() - start < DEADLINE_S


def test_watchdog_beats_keep_a_process_alive():
    code = ("import time; from saekit.distributed.timeouts import Watchdog\n"
            "with Watchdog(1.0) as w:\n    for _ in range(4):\n        time.sleep(0.4); w.beat()\nprint('done')")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=DEADLINE_S)
    assert proc.returncode == 0 and proc.stdout.strip() == "done"


def test_layout_must_match_the_job():
    with pytest.raises(ValueError, match="needs 2 ranks, but the job has 1"):
        setup_distributed(ParallelLayout(data=2, latent=1), timeout_s=5)
    with pytest.raises(ValueError, match="positive number of seconds"):
        setup_distributed(None, timeout_s=0)


def test_one_process_context_needs_no_process_group():
    ctx = setup_distributed(None, timeout_s=5)
    assert (ctx.world, ctx.rank, ctx.latent_group, ctx.data_group) == (1, 0, None, None)
    assert ctx.is_main and ctx.is_writer and ctx.device == torch.device("cpu")
