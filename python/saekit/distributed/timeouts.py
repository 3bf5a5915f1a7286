"""Failing loudly instead of hanging: collective timeouts, peer checks and a step watchdog.

Three layers, each catching what the one before cannot:

1. Every process group saekit creates carries ``timeout`` (``init_process_group(timeout=...)``,
   ``new_subgroups_by_enumeration(timeout=...)``). On gloo a collective that a peer never joins
   raises after that long; one whose peer died raises at once ("Connection closed by peer").
   saekit's collectives run inside :func:`guard`, which turns either into a
   :class:`CollectiveError` naming this rank, the collective, the group and the timeout.
2. :func:`check_peers` is a barrier that names the missing ranks: ``monitored_barrier`` on gloo;
   on NCCL (which has no monitored barrier) a plain barrier under the group's timeout.
3. :class:`Watchdog` covers a rank stuck outside any collective (a data loader, a deadlocked
   thread): unless ``beat()`` is called every ``timeout`` seconds it dumps every thread's stack
   to stderr and exits the process with status 1, so ``torchrun`` tears the job down.

NCCL: collectives are asynchronous, so errors surface in NCCL's watchdog thread, not in the call.
``TORCH_NCCL_ASYNC_ERROR_HANDLING=3`` (torch's default since 2.2; :func:`nccl_environment` sets
it when unset) tears the process down when a collective exceeds the group timeout;
``TORCH_NCCL_ENABLE_MONITORING=1`` with ``TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC`` (default 480 s)
kills a process whose NCCL watchdog itself hangs; ``TORCH_NCCL_DUMP_ON_TIMEOUT=1`` writes the
flight recorder for post-mortems. ``torchrun`` then ends every other worker of the job.
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import os

import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0

# Set only where the user has not chosen otherwise (read by NCCL when its process group starts).
NCCL_DEFAULTS = {
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
    "TORCH_NCCL_ENABLE_MONITORING": "1",
}


class CollectiveError(RuntimeError):
    """A collective did not complete: a peer rank failed, hangs or is unreachable."""


def as_timedelta(timeout_s: float) -> datetime.timedelta:
    """Seconds (a positive finite number) -> timedelta; ValueError naming ``timeout`` otherwise."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < float("inf"):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout_s!r}")
    return datetime.timedelta(seconds=float(timeout_s))


def nccl_environment() -> dict:
    """Apply NCCL_DEFAULTS where unset; returns the NCCL error-handling variables in effect."""
    for key, value in NCCL_DEFAULTS.items():
        os.environ.setdefault(key, value)
    keys = (*NCCL_DEFAULTS, "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC", "TORCH_NCCL_DUMP_ON_TIMEOUT", "TORCH_NCCL_BLOCKING_WAIT")
    return {k: os.environ[k] for k in keys if k in os.environ}


_timeout_s = {"value": None}


def set_collective_timeout(timeout_s: float | None) -> None:
    """Record the process groups' timeout, so that errors can state it."""
    _timeout_s["value"] = timeout_s


def _describe(group) -> str:
    try:
        ranks = dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))
    except Exception:  # a group this rank does not belong to, or torch without the helper
        return "a process group"
    return f"ranks {ranks}"


@contextlib.contextmanager
def guard(what: str, group=None):
    """Run a collective; re-raise any failure as a CollectiveError that says who waited for what.

    what: a short name of the collective ("all_gather of TopK candidates"). group: its process
    group (None: the world).
    """
    try:
        yield
    except CollectiveError:
        raise
    except RuntimeError as e:  # gloo and NCCL raise RuntimeError subclasses (DistBackendError)
        rank = dist.get_rank() if dist.is_initialized() else 0
        limit = _timeout_s["value"]
        waited = f"within the {limit:g} s timeout" if limit is not None else "before its timeout"
        raise CollectiveError(
            f"saekit.distributed: rank {rank}: {what} over {_describe(group)} did not complete {waited}: "
            f"a peer rank failed, hangs or is unreachable, so this rank stops instead of waiting "
            f"forever. Check the other ranks' logs for the first error. Cause: {e}"
        ) from e


def check_peers(what: str = "barrier", group=None, timeout_s: float | None = None) -> None:
    """Barrier over ``group`` that names the ranks that did not arrive (gloo) within the timeout.

    Raises CollectiveError. On NCCL a plain barrier, bounded by the group's own timeout.
    """
    if not dist.is_initialized():
        return
    limit = timeout_s if timeout_s is not None else _timeout_s["value"] or DEFAULT_TIMEOUT_S
    with guard(what, group):
        if dist.get_backend(group) == "gloo":
            dist.monitored_barrier(group=group, timeout=as_timedelta(limit), wait_all_ranks=True)
        else:
            dist.barrier(group=group)


class Watchdog:
    """Ends a process that makes no progress for ``timeout_s`` seconds.

    ``beat()`` (call it once per step) re-arms the timer. Without a beat in time the process
    prints "Timeout (h:mm:ss)!" and every thread's Python stack to stderr and exits with status 1
    (faulthandler does it from a C thread, so it works even while Python is stuck in a C call).
    Use as a context manager or call ``stop()``.
    """

    def __init__(self, timeout_s: float, *, name: str = "step"):
        as_timedelta(timeout_s)
        self.timeout_s = float(timeout_s)
        self.name = name
        self.beat()

    def beat(self) -> None:
        faulthandler.cancel_dump_traceback_later()
        faulthandler.dump_traceback_later(self.timeout_s, repeat=False, exit=True)

    def stop(self) -> None:
        faulthandler.cancel_dump_traceback_later()

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
