"""The Triton tests run the kernels on CPU tensors in Triton's interpreter where no GPU is
present (tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton), and compiled
on CUDA tensors where one is."""

import os

import pytest


@pytest.fixture(scope="session")
def device():
    """Where the triton backend runs in this session: "cpu" (interpreted) or "cuda"."""
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
