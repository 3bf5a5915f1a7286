"""The one place that picks a backend for an op call.

Each backend declares what it supports (``supports`` returns ``None`` or the reason it
cannot run). ``backend="auto"`` takes the first backend of the device's priority list that can
run the call and logs the choice once at debug level (at warning level when only the dense
reference can run, with the reasons the kernels cannot); a backend named explicitly that cannot
run raises ``ValueError`` with the reason, never falls back silently.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import sys

import torch

from saekit._extension import BUILD_INFO, KERNELS, cuda_arch_mismatch

logger = logging.getLogger("saekit.dispatch")

BACKENDS = ("reference", "cpu", "cuda", "triton")

# Fastest first, per device type. The reference backend runs anywhere and is the last resort.
PRIORITY = {
    "cpu": ("cpu", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}

_logged: set = set()

# The triton backend runs CPU tensors only in Triton's interpreter (TRITON_INTERPRET=1), which
# is for testing, never for speed: "auto" never picks it there, naming it explicitly does.

# The largest k (or k_aux) of the triton encoder, whose per-row key buffer lives in registers
# (saekit.triton.MAX_K; kept here so that the check imports nothing).
TRITON_MAX_K = 256


# Looked up once, without importing triton: plain values are cheap to trace.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _release(package: str) -> tuple:
    try:
        return tuple(int(p) for p in importlib.metadata.version(package).split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return (0, 0)


# Triton's interpreter fails on runtime loop bounds before 3.8 with numpy >= 2.4 (triton#9171).
_TRITON_INTERPRETER_OK = _release("triton") >= (3, 8)


def _triton_reason(op: str, device: torch.device, k: int | None = None) -> str | None:
    if not _TRITON_INSTALLED:
        return "triton is not installed (pip install 'saekit[triton]')"
    if k is not None and k > TRITON_MAX_K:
        return f"the triton encoder keeps at most {TRITON_MAX_K} latents per row, got k = {k}"
    if device.type == "cuda":
        return None
    if device.type != "cpu":
        return f"the triton backend runs on CUDA tensors (or CPU ones in its interpreter), got {device.type}"
    return _interpreter_reason()


# A constant to torch.compile: traced, the sys.modules lookups would become guards that the
# first call's own import of saekit.triton breaks ("Guard failed on the same frame").
@torch.compiler.assume_constant_result
def _interpreter_reason() -> str | None:
    """Why Triton's CPU interpreter cannot run saekit's kernels here, or None."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return "triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1 before importing saekit"
    if not _TRITON_INTERPRETER_OK:
        return "triton's CPU interpreter needs triton >= 3.8 (pip install 'saekit[triton-cpu]')"
    loaded = sys.modules.get("saekit.triton")
    if loaded is not None and not loaded.INTERPRETED:
        return "saekit.triton was imported before TRITON_INTERPRET=1 was set, so its kernels are compiled ones"
    if _triton_library_compiled():
        return ("triton was imported (by torch.compile or another library) before TRITON_INTERPRET=1 was "
                "set, so its own library functions are compiled ones: set it before importing anything")
    return None


def _triton_library_compiled() -> bool:
    """Whether triton, already imported, defined its standard library for compilation rather than
    for the interpreter (Triton fixes the mode of each @triton.jit function at definition)."""
    jitted = getattr(sys.modules.get("triton.language.standard"), "_sum_combine", None)
    return jitted is not None and type(jitted).__name__ != "InterpretedFunction"


# (backend, op) -> dtypes that backend's kernel for that op rejects.
UNSUPPORTED_DTYPES = {
    ("cuda", "topk_encode"): (torch.float64,),
    ("cuda", "gradient_topk_encode"): (torch.float64,),
    ("triton", "topk_encode"): (torch.float64,),
    ("triton", "gradient_topk_encode"): (torch.float64,),
    ("triton", "sparse_decode"): (torch.float64,),
}


# CUDA device index -> why saekit._C's cubins cannot run there (None: they can).
_ARCH_REASONS: dict = {}


def _cuda_arch_reason(device: torch.device) -> str | None:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _ARCH_REASONS:
        capability = torch.cuda.get_device_capability(index)
        _ARCH_REASONS[index] = cuda_arch_mismatch(capability, BUILD_INFO["cuda_archs"])
    return _ARCH_REASONS[index]


def supports(
    backend: str, op: str, device: torch.device, dtype: torch.dtype | None = None, *, k: int | None = None
) -> str | None:
    """None when ``backend`` can run ``op`` on ``device`` for ``dtype`` (and, for the encoders,
    ``k`` latents per row, the larger of k and k_aux), else the reason not."""
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
        return _cuda_arch_reason(device)
    if backend == "triton":
        return _triton_reason(op, device, k)
    raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")


def choose(
    op: str, backend: str, device: torch.device, dtype: torch.dtype | None = None, *, k: int | None = None
) -> str:
    """The backend that runs ``op`` for tensors on ``device`` (see the module docstring)."""
    if backend != "auto":
        reason = supports(backend, op, device, dtype, k=k)
        if reason is not None:
            raise ValueError(f"backend={backend!r} cannot run saekit.ops.{op}: {reason}")
        return backend
    reasons = []
    for name in PRIORITY.get(device.type, ("reference",)):
        reason = supports(name, op, device, dtype, k=k)
        if reason is None:
            key = (op, device.type, name)
            if key not in _logged and not torch.compiler.is_compiling():
                _logged.add(key)
                skipped = "; ".join(reasons) or "none skipped"
                # The dense reference is many times slower than a kernel: never quietly.
                level = logging.WARNING if name == "reference" and reasons else logging.DEBUG
                logger.log(level, "saekit.ops.%s on %s: backend %r (%s)", op, device.type, name, skipped)
            return name
        reasons.append(f"{name}: {reason}")
    raise AssertionError("the reference backend always runs")  # pragma: no cover
