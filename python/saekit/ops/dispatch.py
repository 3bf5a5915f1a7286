"""The one place that picks a backend for an op call.

Each backend declares what it supports (``supports`` returns ``None`` or the reason it
cannot run). ``backend="auto"`` takes the first backend of the device's priority list that can
run the call and logs the choice once at debug level; a backend named explicitly that cannot
run raises ``ValueError`` with the reason, never falls back silently.
"""

from __future__ import annotations

import logging

import torch

from saekit._extension import KERNELS

logger = logging.getLogger("saekit.dispatch")

BACKENDS = ("reference", "cpu", "cuda", "triton")

# Fastest first, per device type. The reference backend runs anywhere and is the last resort.
PRIORITY = {
    "cpu": ("cpu", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}

_logged: set = set()


def _triton_reason(op: str, device: torch.device) -> str | None:
    return "the Triton backend is not implemented yet"


# (backend, op) -> dtypes that backend's kernel for that op rejects.
UNSUPPORTED_DTYPES = {
    ("cuda", "topk_encode"): (torch.float64,),
    ("cuda", "gradient_topk_encode"): (torch.float64,),
}


def supports(backend: str, op: str, device: torch.device, dtype: torch.dtype | None = None) -> str | None:
    """None when ``backend`` can run ``op`` on ``device`` for ``dtype``, else the reason not."""
    if dtype is not None and dtype in UNSUPPORTED_DTYPES.get((backend, op), ()):
        return f"the {backend} kernel of {op} does not support {dtype}"
    if backend == "reference":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"the cpu backend runs on CPU tensors, got {device.type} tensors"
        if (op, "CPU") not in KERNELS:
            return "saekit._C has no CPU kernel for this op"
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got {device.type} tensors"
        if (op, "CUDA") not in KERNELS:
            return "saekit._C was built without CUDA kernels (rebuild with CUDA_HOME set)"
        return None
    if backend == "triton":
        return _triton_reason(op, device)
    raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")


def choose(op: str, backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The backend that runs ``op`` for tensors on ``device`` (see the module docstring)."""
    if backend != "auto":
        reason = supports(backend, op, device, dtype)
        if reason is not None:
            raise ValueError(f"backend={backend!r} cannot run saekit.ops.{op}: {reason}")
        return backend
    reasons = []
    for name in PRIORITY.get(device.type, ("reference",)):
        reason = supports(name, op, device, dtype)
        if reason is None:
            key = (op, device.type, name)
            if key not in _logged and not torch.compiler.is_compiling():
                _logged.add(key)
                skipped = "; ".join(reasons) or "none skipped"
                logger.debug("saekit.ops.%s on %s: backend %r (%s)", op, device.type, name, skipped)
            return name
        reasons.append(f"{name}: {reason}")
    raise AssertionError("the reference backend always runs")  # pragma: no cover
