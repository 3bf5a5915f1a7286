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


def _release(version: str) -> str:
    return version.split("+")[0]


if _release(BUILD_INFO["torch_version"]) != _release(torch.__version__):
    raise ImportError(
        f"saekit._C was built against torch {BUILD_INFO['torch_version']} but torch "
        f"{torch.__version__} is installed; rebuild saekit with "
        "`pip install --no-build-isolation --force-reinstall .`"
    )

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
