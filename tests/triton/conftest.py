"""The Triton tests run the kernels on CPU tensors in Triton's interpreter where no GPU is
present, and compiled on CUDA tensors where one is.

TRITON_INTERPRET is read when a kernel is defined, so it is set here, at collection, before
anything imports saekit.triton (saekit.ops imports it lazily, at the first triton call).
Asking torch whether CUDA is available initialises nothing and is safe without a GPU.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def device():
    """Where the triton backend runs in this session: "cpu" (interpreted) or "cuda"."""
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
