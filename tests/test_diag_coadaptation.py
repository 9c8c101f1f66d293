"""Co-adaptation measures against hand computation on hand-made activations; health monitors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import droplab as dl
from droplab.diagnostics import (
    HealthMonitor,
    ablation_sensitivity,
    capture_activations,
    coadaptation,
    coadaptation_summary,
    effective_rank,
    grad_norms,
    hidden_layers,
    loss_slope,
    pairwise_correlation,
    sparsity,
)


def test_pairwise_correlation_by_hand():
    u1 = torch.tensor([1.0, 2.0, 3.0, 4.0])
    u2 = 2 * u1 + 1  # correlation 1 with u1
    u3 = torch.tensor([1.0, -1.0, 1.0, -1.0])  # centred u1 . u3 = -2, |u1c| = sqrt(5), |u3c| = 2
    dead = torch.full((4,), 7.0)
    corr, n_dead = pairwise_correlation(torch.stack([u1, u2, u3, dead], dim=1))
    expected = (1 + 2 / (2 * math.sqrt(5)) * 2) / 3
    assert n_dead == 1 and corr == pytest.approx(expected, abs=1e-12)
    assert math.isnan(pairwise_correlation(torch.stack([u1, dead], dim=1))[0])


def test_effective_rank_by_hand():
    diag = torch.diag(torch.tensor([3.0, 1.0]))
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(diag, center=False) == pytest.approx(math.exp(entropy), rel=1e-12)
    assert effective_rank(torch.eye(5), center=False) == pytest.approx(5.0)
    rank_one = torch.outer(torch.arange(1.0, 7.0), torch.tensor([1.0, -2.0, 0.5]))
    assert effective_rank(rank_one) == pytest.approx(1.0)
    # centred: orthogonal zero-mean columns of equal norm span 2 equal directions
    two = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    assert effective_rank(two) == pytest.approx(2.0)
    with pytest.raises(ValueError, match=r"\(samples, units\)"):
        effective_rank(torch.ones(3))


def test_sparsity_by_hand():
    acts = torch.tensor([[0.0, 2.0], [0.005, -1.0]])
    s = sparsity(acts, threshold=0.01)
    assert s["mean_activation"] == pytest.approx(1.005 / 4)
    assert s["mean_abs_activation"] == pytest.approx(3.005 / 4)
    assert s["near_zero"] == 0.5


class SumHead(nn.Module):
    """hidden = x (4 units); logits = [sum(hidden), 0.5]: class 0 iff some unit is active."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Identity()

    def forward(self, x):
        h = self.hidden(x)
        return torch.stack([h.sum(dim=1), torch.full((x.shape[0],), 0.5)], dim=1)


def test_ablation_by_hand():
    x = torch.eye(4)  # sample i uses unit i only
    y = torch.zeros(4, dtype=torch.long)
    result = ablation_sensitivity(SumHead(), [(x[:2], y[:2]), (x[2:], y[2:])], "hidden",
                                  fractions=(0.25, 0.5, 1.0), subsets=3)
    assert result.accuracy == 1.0 and result.units == 4 and result.units_tried == 4
    assert result.single_mean_drop == 0.25 and result.single_max_drop == 0.25  # one sample of four each
    assert result.subset_drops == {0.25: 0.25, 0.5: 0.5, 1.0: 1.0}
    limited = ablation_sensitivity(SumHead(), [(x, y)], "hidden", max_units=2, fractions=(0.5,), subsets=1)
    assert limited.units_tried == 2
    with pytest.raises(ValueError, match="labelled batches"):
        ablation_sensitivity(SumHead(), [x], "hidden")
    with pytest.raises(ValueError, match="not a module"):
        ablation_sensitivity(SumHead(), [(x, y)], "nope")


def test_capture_feature_maps_and_default_layers():
    model = nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(15, 4), nn.Tanh(),
                          nn.Linear(4, 2))
    assert hidden_layers(model) == ["1", "4"]
    assert hidden_layers(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))) == ["0"]
    model.train()
    acts = capture_activations(model, [torch.randn(2, 1, 5), torch.randn(3, 1, 5)])
    assert acts["1"].shape == (25, 3) and acts["4"].shape == (5, 4)  # channels are units, positions samples
    assert model.training
    with pytest.raises(ValueError, match="not modules"):
        capture_activations(model, [torch.randn(2, 1, 5)], ["zzz"])


def test_coadaptation_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), dl.nn.Dropout(0.5, seed=0), nn.Linear(16, 3))
    loader = [(torch.randn(32, 6), torch.randint(0, 3, (32,))) for _ in range(2)]
    (layer,) = coadaptation(model, loader, max_units=4, fractions=(0.5,), subsets=2)
    row = layer.as_row()
    assert row["layer"] == "1" and row["units"] == 16 and 0 <= row["correlation"] <= 1
    assert 1 <= row["effective_rank"] <= 16 and 0 <= row["near_zero"] <= 1 and "drop_50pct" in row
    (no_ablation,) = coadaptation(model, [x for x, _ in loader], ablation=False)
    assert no_ablation.ablation is None and no_ablation.correlation == pytest.approx(layer.correlation)
    summary = coadaptation_summary(model, loader, max_units=4, fractions=(0.5,), subsets=2)
    assert summary["correlation"] == pytest.approx(layer.correlation) and "drop_50pct" in summary


# ---------------------------------------------------------------------------------------------- health


def test_grad_norms_by_hand():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    model[0].weight.grad = torch.ones(2, 3)
    model[0].bias.grad = torch.tensor([3.0, 4.0])
    norms = grad_norms(model)
    assert norms == {"0": pytest.approx(math.sqrt(31)), "<total>": pytest.approx(math.sqrt(31))}


def test_loss_slope_by_hand():
    assert loss_slope([4.0, 3.0, 2.0, 1.0], relative=False) == pytest.approx(-1.0)
    assert loss_slope([4.0, 3.0, 2.0, 1.0]) == pytest.approx(-0.25)
    assert loss_slope([4.0, 3.0, 9.0, 9.0], epochs=2) == pytest.approx(-0.25)
    assert math.isnan(loss_slope([1.0])) and math.isnan(loss_slope([1.0, float("nan")]))


def test_health_monitor_flags_a_flat_loss_and_vanishing_gradients():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    monitor = HealthMonitor(early_epochs=3)
    for epoch, loss in enumerate([1.0, 1.0, 1.01]):
        model[0].weight.grad = torch.full((2, 3), 1e-9)
        model[1].weight.grad = torch.ones(1, 2)
        monitor.after_backward(model)
        health = monitor.end_epoch(epoch, loss)
    assert any("vanishing gradients in 0" in w for w in health.warnings)
    assert any("did not fall over the first 3 epochs" in w for w in health.warnings)
    assert health.grad_norms["1"] == pytest.approx(math.sqrt(2))
    good = HealthMonitor(early_epochs=2)
    good.end_epoch(0, 2.0)
    assert good.end_epoch(1, 1.0).warnings == [] and good.history[-1].loss_slope == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="early_epochs"):
        HealthMonitor(early_epochs=1)
