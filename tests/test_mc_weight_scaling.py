"""compare_to_weight_scaling: the table's shape and values against direct computation."""

import pytest
import torch
from torch import nn

import droplab as dl
from droplab.mc import compare_to_weight_scaling, nll, predict


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), dl.nn.Dropout(0.5, seed=1), nn.Linear(32, 3)).double()


def test_rows_match_direct_computation():
    model, (x, y) = _model(), _data()
    loader = [(x[:30], y[:30]), (x[30:], y[30:])]
    rows = compare_to_weight_scaling(model, loader, samples=[1, 4, 20], seed=7)
    assert [(r["method"], r["samples"]) for r in rows] == [("weight_scaling", None), ("mc", 1), ("mc", 4), ("mc", 20)]
    with torch.no_grad():
        ws = model.eval()(x).softmax(-1)
    assert rows[0]["accuracy"] == pytest.approx((ws.argmax(-1) == y).double().mean().item())
    assert rows[0]["nll"] == pytest.approx(nll(ws, y).item())
    # MC rows: the first k of one 20-sample draw per batch, batch b with seed 7 + b
    probs = torch.cat([predict(model, xb, 20, seed=7 + b).samples.softmax(-1) for b, (xb, _) in enumerate(loader)], 1)
    for row in rows[1:]:
        avg = probs[: row["samples"]].mean(0)
        assert row["accuracy"] == pytest.approx((avg.argmax(-1) == y).double().mean().item())
        assert row["nll"] == pytest.approx(nll(avg, y).item())


def test_mc_average_approaches_weight_scaling_for_a_linear_head():
    # dropout directly before the last Linear: the MC mean of the logits converges to the weight-scaled
    # logits (exactly in expectation), so with many samples the predictions agree on nearly every input
    model, (x, y) = _model(), _data(1)
    logits = predict(model, x, 400, seed=3).samples
    with torch.no_grad():
        ws = model.eval()(x)
    err = (logits.mean(0) - ws).abs().max().item()
    spread = logits.std(0).max().item()
    assert err < 5 * spread / 400**0.5  # 5 standard errors of the mean
    rows = compare_to_weight_scaling(model, [(x, y)], samples=[1, 100], seed=3)
    assert rows[2]["nll"] <= rows[1]["nll"]  # averaging 100 samples beats a single thinned network


def test_mode_restored_and_bad_arguments():
    model, (x, y) = _model(), _data()
    model.train()
    compare_to_weight_scaling(model, [(x, y)], samples=[2], seed=0)
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError, match="output must be one of"):
        compare_to_weight_scaling(model, [(x, y)], output="scores")
    with pytest.raises(ValueError, match="samples must be positive"):
        compare_to_weight_scaling(model, [(x, y)], samples=[0])
    with pytest.raises(ValueError, match="no batches"):
        compare_to_weight_scaling(model, [])
