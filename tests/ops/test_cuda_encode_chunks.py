"""The CUDA encoder's chunked selection on a GPU: the threshold filter, the per-row candidate
cap and the full merge after an overflow, forced on small shapes by capping the chunk size
with SAEKIT_CUDA_ENCODE_CHUNK, with the selection on a second stream and on the caller's
(SAEKIT_CUDA_ENCODE_OVERLAP). Latent offsets that rise with the index make every chunk beat
the rows' thresholds (overflow on every chunk); falling offsets leave later chunks with almost
no candidates. Grid data keeps every product exact, so selections must equal the reference's."""

import pytest
import torch

from saekit.ops import gradient_topk_encode, topk_encode
from tests.ops.cases import encoder_inputs, grid

pytestmark = pytest.mark.gpu

N, d, M = 37, 16, 1000


def _inputs(dtype, order, seed):
    x, W, be, bd = encoder_inputs(N, d, M, torch.float64, seed=seed)
    step = 4.0 * torch.div(torch.arange(M, dtype=torch.float64), 8, rounding_mode="floor")
    be = be + {"rising": step, "falling": -step, "plain": 0 * step}[order]
    g = torch.Generator().manual_seed(seed + 1)
    grad, W_dec = grid((N, d), g), grid((M, d), g)
    dead = torch.rand(M, generator=g) < 0.3
    return [t.to(device="cuda", dtype=dtype) for t in (x, W, be, bd, grad, W_dec)] + [dead.cuda()]


@pytest.mark.parametrize("overlap", ["1", "0"])
@pytest.mark.parametrize("chunk", [64, 300])
@pytest.mark.parametrize("k", [4, 37])
@pytest.mark.parametrize("order", ["plain", "rising", "falling"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_chunked_selection_equals_reference(monkeypatch, dtype, order, k, chunk, overlap):
    x, W, be, bd, grad, W_dec, dead = _inputs(dtype, order, seed=k + chunk)
    k_aux = 2 * k
    expect = topk_encode(x, W, be, bd, k, dead=dead, k_aux=k_aux, backend="reference")
    expect_g = gradient_topk_encode(x, grad, W, be, W_dec, bd, k, beta=0.5, backend="reference")
    monkeypatch.setenv("SAEKIT_CUDA_ENCODE_CHUNK", str(chunk))
    monkeypatch.setenv("SAEKIT_CUDA_ENCODE_OVERLAP", overlap)
    out = topk_encode(x, W, be, bd, k, dead=dead, k_aux=k_aux, backend="cuda")
    out_g = gradient_topk_encode(x, grad, W, be, W_dec, bd, k, beta=0.5, backend="cuda")
    for got, want in ((out, expect), (out_g, expect_g)):
        for a, b in zip(got, want):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name,value", [("SAEKIT_CUDA_ENCODE_CHUNK", "lots"), ("SAEKIT_CUDA_ENCODE_CHUNK", "64k"),
                                        ("SAEKIT_CUDA_ENCODE_CHUNK", "0"), ("SAEKIT_CUDA_ENCODE_OVERLAP", "yes")])
def test_bad_setting_is_an_error(monkeypatch, name, value):
    x, W, be, bd, *_ = _inputs(torch.float32, "plain", seed=0)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        topk_encode(x, W, be, bd, 4, backend="cuda")


@pytest.mark.parametrize("order", ["rising", "falling"])
def test_overlapped_chunks_on_a_busy_caller_stream(monkeypatch, order):
    """Many chunks with the selection on a second stream while the caller's own (non-default,
    busy) stream runs the GEMMs: per-chunk waits, the full-merge and filtered paths, and the
    final wait before the caller reads the outputs on its stream."""
    x, W, be, bd, grad, W_dec, dead = _inputs(torch.bfloat16, order, seed=2)
    expect = topk_encode(x, W, be, bd, 9, dead=dead, k_aux=20, backend="reference")
    monkeypatch.setenv("SAEKIT_CUDA_ENCODE_CHUNK", "64")
    monkeypatch.setenv("SAEKIT_CUDA_ENCODE_OVERLAP", "1")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.cuda._sleep(10_000_000)  # keep the caller's stream busy while the encoder enqueues
        out = topk_encode(x, W, be, bd, 9, dead=dead, k_aux=20, backend="cuda")
        got = [t.clone() for t in out]
    stream.synchronize()
    for a, b in zip(got, expect):
        assert torch.equal(a, b)


def _kernel_streams(fn):
    """The CUDA streams on which fn's kernels ran, from a profiler trace."""
    import json
    import tempfile
    from pathlib import Path

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.loads(Path(f.name).read_text())["traceEvents"]
    return {e["args"]["stream"] for e in events if e.get("cat") == "kernel"}


@pytest.mark.parametrize("overlap,streams", [("1", 2), ("0", 1)])
def test_selection_runs_on_a_second_stream_only_with_overlap(monkeypatch, overlap, streams):
    x, W, be, bd, *_ = _inputs(torch.bfloat16, "plain", seed=3)
    monkeypatch.setenv("SAEKIT_CUDA_ENCODE_CHUNK", "64")
    monkeypatch.setenv("SAEKIT_CUDA_ENCODE_OVERLAP", overlap)
    topk_encode(x, W, be, bd, 9, backend="cuda")  # warm-up: cuBLAS handles, the stream pool
    assert len(_kernel_streams(lambda: topk_encode(x, W, be, bd, 9, backend="cuda"))) == streams


def test_captured_in_a_cuda_graph(monkeypatch):
    """CUDA graph capture allows no host sync: the encoder then merges every chunk in full on
    the capturing stream, and replays give the reference's selection. (AuxK cannot be captured:
    checking k_aux <= dead.sum() reads the mask on the host.)"""
    x, W, be, bd, *_ = _inputs(torch.bfloat16, "plain", seed=4)
    expect = topk_encode(x, W, be, bd, 9, backend="reference")
    monkeypatch.setenv("SAEKIT_CUDA_ENCODE_CHUNK", "64")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch asks before capture
        topk_encode(x, W, be, bd, 9, backend="cuda")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = topk_encode(x, W, be, bd, 9, backend="cuda")
    for _ in range(2):
        for t in out:
            t.zero_()
        graph.replay()
        torch.cuda.synchronize()
        for a, b in zip(out, expect):
            assert torch.equal(a, b)
