"""``python -m saekit.info``: versions, what saekit._C was built with, and for each op which
backends can run here and why not."""

from __future__ import annotations

import importlib.util
import platform

import torch

import saekit
from saekit._extension import BUILD_INFO
from saekit.ops import dispatch


def _triton_version() -> str:
    if importlib.util.find_spec("triton") is None:
        return "not installed"
    try:
        from importlib.metadata import version

        return version("triton")
    except Exception:  # an unusual install without metadata
        return "installed (version unknown)"


def _device_line() -> str:
    if not torch.cuda.is_available():
        return "CUDA device: none"
    major, minor = torch.cuda.get_device_capability()
    return f"CUDA device: {torch.cuda.get_device_name()} (sm_{major}{minor})"


def _archs() -> str:
    return ", ".join("sm_" + a for a in BUILD_INFO["cuda_archs"].split(",") if a)


def report() -> str:
    """The text ``python -m saekit.info`` prints."""
    lines = [
        f"saekit {saekit.__version__} at {saekit.__file__.rsplit('/', 2)[0]}",
        f"python {platform.python_version()}; torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}); "
        f"triton {_triton_version()}",
        _device_line(),
        f"saekit._C: built against torch {BUILD_INFO['torch_version']}, "
        f"CUDA kernels {'for ' + _archs() if BUILD_INFO['with_cuda'] else 'not built'}, "
        f"OpenMP {BUILD_INFO['openmp']}",
    ]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for op in ("topk_encode", "gradient_topk_encode", "sparse_decode"):
        for device in devices:
            lines.append(f"{op} on {device.type}:")
            for backend in dispatch.BACKENDS:
                reason = dispatch.supports(backend, op, device)
                lines.append(f"  {backend:<9} {'available' if reason is None else 'no: ' + reason}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
