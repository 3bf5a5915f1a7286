"""The one timing harness of saekit's benchmarks: warm-up, median and 20th/80th percentiles over
repeats with fresh inputs cycled, peak memory per case, and the provenance of every result.

Used by ``saekit bench`` and by the scripts under ``benchmarks/``."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch


@dataclass
class Timing:
    name: str
    median_s: float
    p20_s: float
    p80_s: float
    peak_bytes: int | None = None
    extra: dict = field(default_factory=dict)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (VmHWM: peak resident set, VmRSS: resident set)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_peak(fn: Callable[[], object], device: str = "cpu") -> int | None:
    """Peak memory in bytes that one call of fn adds over what was held before it.

    CUDA: torch's allocator peak. CPU: the process's peak resident set (VmHWM, reset through
    /proc/self/clear_refs) over its resident set before the call; None where Linux refuses.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        del out
        return torch.cuda.max_memory_allocated() - base
    if not _reset_rss_peak():
        return None
    base = _status_bytes("VmRSS")
    out = fn()
    peak = _status_bytes("VmHWM")
    del out
    return None if base is None or peak is None else max(peak - base, 0)


def bench(name: str, fn: Callable[[int], object], *, device: str = "cpu", repeats: int = 5,
          warmup: int = 1, peak: bool = True) -> Timing:
    """Times fn(i) for i = 0..repeats-1 after `warmup` calls; fn may cycle its input sets by i."""
    for i in range(warmup):
        fn(i)
    _sync(device)
    times = []
    for i in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn(i)
        _sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * (len(times) - 1) + 0.5))]  # noqa: E731
    peak_bytes = measure_peak(lambda: fn(0), device) if peak else None
    return Timing(name, pick(0.5), pick(0.2), pick(0.8), peak_bytes)


def _saekit_version() -> str:
    import saekit

    return saekit.__version__


def provenance(device: str = "cpu") -> dict:
    """Device, versions, commit and date for a result file. The commit comes from git, or from
    $SAEKIT_COMMIT where the tree has no git (a copy on a lent GPU machine)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        commit = ""
    commit = commit or os.environ.get("SAEKIT_COMMIT", "")
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit or "unknown",
        "saekit": _saekit_version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"
    return info


def write_results(stem: str, payload: dict, markdown: str, out_dir=None) -> tuple[Path, Path]:
    """Writes <out_dir>/<stem>.json and .md; out_dir defaults to $SAEKIT_RESULTS_DIR, else
    benchmarks/results under the current directory."""
    out = Path(out_dir or os.environ.get("SAEKIT_RESULTS_DIR") or Path.cwd() / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / f"{stem}.json", out / f"{stem}.md"
    j.write_text(json.dumps(payload, indent=2, default=lambda o: asdict(o)) + "\n")
    m.write_text(markdown)
    return j, m


def fmt_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f} MiB"
