"""What the installed package says about its build, and the errors of environments it was not
built for."""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import saekit
from saekit._extension import BUILD_INFO, cuda_arch_mismatch, torch_mismatch
from saekit.ops import dispatch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not os.environ.get("SAEKIT_EXPECT_INSTALLED"), reason="set by CI, which tests the built wheel")
def test_runs_against_the_installed_wheel_not_the_source_tree():
    location = Path(saekit.__file__).resolve()
    assert "site-packages" in location.parts, location
    assert ROOT / "python" not in location.parents
    assert (location.parent / "triton").is_dir(), "the Triton kernels ship in the wheel as Python"


def test_build_info_records_torch_and_architectures():
    assert torch_mismatch(BUILD_INFO["torch_version"], torch.__version__) is None
    if BUILD_INFO["with_cuda"]:
        archs = BUILD_INFO["cuda_archs"].split(",")
        # The build's TORCH_CUDA_ARCH_LIST (benchmarks/gpu_run.sh: the lent GPU's alone), else
        # the default pair.
        asked = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0a").replace(" ", ";").split(";")
        assert {a.replace("+PTX", "").replace(".", "") for a in asked if a} <= set(archs), archs


@pytest.mark.parametrize(("built", "installed", "ok"), [
    ("2.14.1+cu130", "2.14.1", True),
    ("2.14.1", "2.14.0", False),
    ("2.11.0", "2.14.1+cu130", False),
])
def test_torch_release_must_match(built, installed, ok):
    reason = torch_mismatch(built, installed)
    assert (reason is None) == ok
    if not ok:
        assert built in reason and installed in reason and "wheel built for torch" in reason


@pytest.mark.parametrize(("capability", "archs", "ok"), [
    ((8, 0), "80,90a", True),
    ((8, 6), "80,90a", True),   # sm_80 cubins run on later sm_8x
    ((9, 0), "80,90a", True),
    ((8, 9), "90a", False),     # architecture-specific cubins run on their exact GPU only
    ((10, 0), "80,90a", False),
    ((7, 5), "80", False),
])
def test_cuda_architecture_check(capability, archs, ok):
    reason = cuda_arch_mismatch(capability, archs)
    assert (reason is None) == ok
    if not ok:
        assert f"sm_{capability[0]}{capability[1]}" in reason and "TORCH_CUDA_ARCH_LIST" in reason


def test_cpu_only_build_asked_for_cuda_says_so(monkeypatch):
    monkeypatch.setattr(dispatch, "KERNELS", frozenset(k for k in dispatch.KERNELS if k[1] != "CUDA"))
    reason = dispatch.supports("cuda", "topk_encode", torch.device("cuda"))
    assert reason is not None and "without CUDA kernels" in reason
    with pytest.raises(ValueError, match="backend='cuda' cannot run saekit.ops.topk_encode"):
        dispatch.choose("topk_encode", "cuda", torch.device("cuda"))


def test_gpu_the_wheel_lacks_an_architecture_for_says_so(monkeypatch):
    """backend="cuda" on a GPU whose architecture saekit._C has no cubin for: a clear error, and
    "auto" falls through to the next backend rather than failing in a kernel launch."""
    kernels = dispatch.KERNELS | {("topk_encode", "CUDA")}
    monkeypatch.setattr(dispatch, "KERNELS", kernels)
    monkeypatch.setattr(dispatch, "BUILD_INFO", dict(dispatch.BUILD_INFO, cuda_archs="80,90a"))
    monkeypatch.setattr(dispatch, "_ARCH_REASONS", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    gpu = torch.device("cuda", 0)
    reason = dispatch.supports("cuda", "topk_encode", gpu)
    assert reason is not None and "sm_75" in reason and "sm_80, sm_90a" in reason
    with pytest.raises(ValueError, match="backend='cuda' cannot run saekit.ops.topk_encode: .*sm_75"):
        dispatch.choose("topk_encode", "cuda", gpu)
    monkeypatch.setattr(dispatch, "_ARCH_REASONS", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    assert dispatch.supports("cuda", "topk_encode", gpu) is None


def test_info_prints_versions_archs_and_backends():
    out = subprocess.run([sys.executable, "-m", "saekit.info"], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert f"saekit {saekit.__version__}" in out
    assert f"torch {torch.__version__}" in out and "triton " in out
    assert "built against torch" in out
    for op in ("topk_encode", "gradient_topk_encode", "sparse_decode"):
        assert f"{op} on cpu:" in out


def test_installed_metadata_is_complete():
    meta = importlib.metadata.metadata("saekit")
    assert meta["Requires-Python"] == ">=3.10"
    assert "Apache" in (meta.get("License") or meta.get("License-Expression") or "")
    classifiers = meta.get_all("Classifier")
    assert "License :: OSI Approved :: Apache Software License" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.") for c in classifiers)
    requires = meta.get_all("Requires-Dist")
    for name in ("torch", "numpy", "safetensors", "tqdm"):
        spec = next(r for r in requires if r.split(">")[0].strip() == name)
        assert ">=" in spec, f"{name} needs a lower bound: {spec}"
    assert {"test", "triton", "peers"} <= set(meta.get_all("Provides-Extra"))


@pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="needs the build package (test extra)")
def test_sdist_builds_offline_and_holds_the_sources(tmp_path):
    """The sdist builds without a network (no isolation, nothing downloaded) and carries what a
    source build needs: the C++/CUDA sources, CMakeLists.txt, the Python package with its Triton
    kernels, and the licence."""
    # --skip-dependency-check: what the build needs is checked by building; the check itself
    # also walks the installed torch's own requirements, which a machine may not meet.
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--skip-dependency-check",
                           "-o", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (sdist,) = tmp_path.glob("saekit-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    expected = {"CMakeLists.txt", "pyproject.toml", "LICENSE", "README.md", "python/saekit/__init__.py",
                "python/saekit/triton/encode_kernel.py"}
    assert expected <= names, expected - names
    assert any(n.startswith("csrc/") and n.endswith(".cu") for n in names)
    assert not any(n.startswith(("build/", "dist/", ".ci-venv/", "runs/")) for n in names)
