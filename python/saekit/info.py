"""``python -m saekit.info``: versions, what saekit._C was built with, and for each op which
backends can run here and why not."""

from __future__ import annotations

import importlib.util

import torch

import saekit
from saekit._extension import BUILD_INFO
from saekit.ops import dispatch


def report() -> str:
    lines = [
        f"saekit {saekit.__version__}",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}); "
        f"CUDA device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}",
        f"triton {'installed' if importlib.util.find_spec('triton') else 'not installed'}",
        f"saekit._C: built against torch {BUILD_INFO['torch_version']}, "
        f"CUDA kernels {'for sm_' + BUILD_INFO['cuda_archs'] if BUILD_INFO['with_cuda'] else 'not built'}, "
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
