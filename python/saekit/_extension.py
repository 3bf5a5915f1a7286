"""Loads the compiled extension ``saekit._C`` and records what it was built against.

Importing it registers the ``torch.ops.saekit`` schemas and their CPU (and, when compiled,
CUDA) kernels. A missing extension or one built for another torch fails loudly here rather
than later inside an op.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("saekit")

try:
    from saekit import _C  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "saekit's compiled extension saekit._C could not be loaded "
        f"({exc}). Build it with `pip install --no-build-isolation .` against the torch you "
        "run with; see README.md."
    ) from exc

BUILD_INFO: dict = dict(_C.build_info())


def torch_mismatch(built: str, installed: str) -> str | None:
    """Why an extension built against torch ``built`` cannot load into torch ``installed``, or
    None. saekit ships a wheel per torch release (it uses torch's full C++ API, whose ABI is
    only promised within a release), so the releases must be equal; local tags (+cu130) may
    differ."""
    if built.split("+")[0] == installed.split("+")[0]:
        return None
    return (
        f"saekit._C was built against torch {built} but torch {installed} is installed: install "
        f"the saekit wheel built for torch {installed.split('+')[0]}, or rebuild from source with "
        "`pip install --no-build-isolation --force-reinstall .`"
    )


def cuda_arch_mismatch(capability: tuple[int, int], archs: str) -> str | None:
    """Why CUDA kernels compiled for ``archs`` ("80,90a") cannot run on a GPU of compute
    ``capability`` (major, minor), or None. A cubin runs on its own major architecture at an
    equal or higher minor; "a" (architecture-specific) cubins run only on their exact one."""
    major, minor = capability
    for arch in filter(None, archs.split(",")):
        exact = arch.endswith("a")
        digits = arch.rstrip("a")
        a_major, a_minor = int(digits[:-1]), int(digits[-1])
        if a_major == major and (a_minor == minor if exact else a_minor <= minor):
            return None
    built = ", ".join("sm_" + a for a in archs.split(",") if a) or "no architecture"
    return (
        f"saekit._C has CUDA kernels for {built}, not for this GPU (sm_{major}{minor}): rebuild "
        f"with TORCH_CUDA_ARCH_LIST={major}.{minor} or use backend='triton'"
    )


_mismatch = torch_mismatch(BUILD_INFO["torch_version"], torch.__version__)
if _mismatch:
    raise ImportError(_mismatch)

if BUILD_INFO["with_cuda"]:
    logger.debug("saekit._C built with CUDA kernels for sm_%s", BUILD_INFO["cuda_archs"])
elif torch.cuda.is_available():
    logger.warning(
        "saekit._C was built CPU-only although a CUDA device is present: the 'cuda' backend "
        "is unavailable. Rebuild with CUDA_HOME set to a CUDA toolkit to compile it."
    )
else:
    logger.info("saekit._C was built CPU-only: the 'cuda' backend is unavailable")


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``torch.ops.saekit.<op>`` has a kernel registered for ``dispatch_key``."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"saekit::{op}", dispatch_key)


# Filled once at import so that backend choice is a plain set lookup, which torch.compile
# traces without a graph break.
COMPILED_OPS = (
    "topk_encode",
    "gradient_topk_encode",
    "topk_encode_backward",
    "sparse_decode",
    "sparse_decode_backward",
)
KERNELS = frozenset(
    (op, key) for op in COMPILED_OPS for key in ("CPU", "CUDA") if has_kernel(op, key)
)
