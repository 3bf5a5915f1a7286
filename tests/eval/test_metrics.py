import pytest
import torch

from saekit.eval import ReconstructionMetrics, downstream_summary, format_table, mean_max_cosine
from saekit.nn import SparseCode, fvu


def test_streaming_metrics_equal_whole_batch_values():
    g = torch.Generator().manual_seed(0)
    x, x_hat = torch.randn(50, 6, generator=g), torch.randn(50, 6, generator=g)
    indices = torch.tensor([[0, 1], [0, 2]]).repeat(25, 1)
    values = torch.ones(50, 2)
    values[::2, 1] = 0  # latent 1 never fires with a nonzero value
    m = ReconstructionMetrics(5, dense_threshold=0.6)
    for i in range(0, 50, 15):
        m.update(x[i:i + 15], x_hat[i:i + 15], SparseCode(values[i:i + 15], indices[i:i + 15]))
    r = m.compute()
    assert r["fvu"] == pytest.approx(fvu(x, x_hat).item(), rel=1e-6)
    assert r["l0"] == pytest.approx(1.5)
    assert r["dead_frac"] == pytest.approx(3 / 5)  # latents 1, 3, 4
    assert r["dense_frac"] == pytest.approx(1 / 5)  # latent 0 fires on every row


def test_downstream_summary_and_mmcs():
    s = downstream_summary(1.0, 1.5, 3.0)
    assert s["loss_increase"] == 0.5 and s["loss_recovered"] == pytest.approx(0.75)
    truth = torch.eye(3)
    mean, best = mean_max_cosine(truth, torch.tensor([[1.0, 0, 0], [0, 2.0, 0]]))
    assert best.tolist() == [1.0, 1.0, 0.0] and mean == pytest.approx(2 / 3)
    table = format_table({"a": {"fvu": 0.1, "mmcs": 0.5}, "b": {"fvu": 0.2}})
    assert "FVU" in table and "MMCS" in table and "-" in table.splitlines()[-1]


def test_nothing_evaluated_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        ReconstructionMetrics(4).compute()
