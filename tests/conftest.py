import os

import pytest
import torch

# Without a GPU the Triton tests run in Triton's CPU interpreter. Triton fixes the mode of every
# @triton.jit function, its own standard library included, when it is defined, and other tests
# import triton early (torch.compile, sparsify): so the mode is set here, before any of them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """GPU tests (marker "gpu") are skipped on a machine without CUDA; nothing initialises
    CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
