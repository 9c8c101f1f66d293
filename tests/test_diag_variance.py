"""variance_shift measures about 1/q on a dropout -> BatchNorm stack; recalibrate_bn removes it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import droplab as dl
from droplab.diagnostics import recalibrate_bn, variance_shift


def data(batches=20, n=256, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, d, generator=g), torch.zeros(n, dtype=torch.long)) for _ in range(batches)]


def train_stats(model, loader, epochs=2):
    """Accumulate BatchNorm statistics in train mode (dropout on), as training would."""
    model.train()
    with torch.no_grad():
        for _ in range(epochs):
            for x, _ in loader:
                model(x)
    return model


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_shift_is_about_one_over_q_and_recalibration_removes_it(p):
    model = nn.Sequential(dl.nn.Dropout(p, seed=1), nn.BatchNorm1d(16, momentum=None))
    loader = data()
    train_stats(model, loader)
    (shift,) = variance_shift(model, loader)
    q = 1 - p
    assert shift.batchnorm == "1" and shift.dropout == "0" and shift.p == p
    assert abs(shift.shift - 1 / q) < 0.05 / q  # within 5 %
    assert abs(shift.train_ratio - 1 / q) < 0.05 / q
    assert abs(shift.inference_var - 1.0) < 0.05
    assert model.training  # untouched

    recalibrate_bn(model, loader)
    (after,) = variance_shift(model, loader)
    assert abs(after.shift - 1.0) < 0.03
    assert model.training and model[1].momentum is None  # modes and momentum restored


def test_shift_through_a_linear_layer_and_clean_models():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), dl.nn.Dropout(0.5, seed=2), nn.Linear(16, 16),
                          nn.BatchNorm1d(16, momentum=None))
    loader = data(10)
    train_stats(model, loader)
    (shift,) = variance_shift(model, loader, max_batches=5)
    assert shift.batchnorm == "4" and shift.shift > 1.3  # nonzero-mean ReLU input: less than 1/q, clearly > 1
    recalibrate_bn(model.eval(), loader)
    assert abs(variance_shift(model, loader)[0].shift - 1.0) < 0.03
    assert not model.training

    clean = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5))
    assert variance_shift(clean, loader) == []


def test_recalibration_restores_state_on_error():
    model = nn.Sequential(dl.nn.Dropout(0.5, seed=1), nn.BatchNorm1d(4))
    train_stats(model, [(torch.randn(32, 4), None)])
    before = model[1].running_var.clone()
    with pytest.raises(RuntimeError):
        recalibrate_bn(model, [torch.randn(8, 4), torch.randn(8, 5)])
    assert torch.equal(model[1].running_var, before) and model[1].momentum == 0.1 and model.training
    with pytest.raises(ValueError, match="loader is empty"):
        recalibrate_bn(model, [])
