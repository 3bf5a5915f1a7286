import math

import pytest

from saekit.training.schedule import lr_at


def test_warmup_then_constant_then_cosine_to_floor():
    kw = dict(lr=1.0, total_steps=100, warmup_steps=10, decay="cosine", decay_start=0.8, min_lr_frac=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(50, **kw) == 1.0
    assert lr_at(80, **kw) == pytest.approx(1.0)
    assert lr_at(90, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, **kw) == pytest.approx(0.1)


def test_linear_and_constant_decay():
    assert lr_at(90, lr=2.0, total_steps=100, decay="linear", decay_start=0.8) == pytest.approx(1.0)
    assert lr_at(99, lr=2.0, total_steps=100, decay="constant") == 2.0


def test_unknown_decay_is_an_error():
    with pytest.raises(ValueError, match="decay"):
        lr_at(0, lr=1.0, total_steps=10, decay="step")
