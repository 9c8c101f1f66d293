"""Uncertainty and calibration metrics: hand-computed tiny cases and cross-checks with torchmetrics/sklearn."""

import math

import numpy as np
import pytest
import torch

from droplab.mc import (
    brier_score,
    expected_calibration_error,
    expected_entropy,
    gaussian_nll,
    mutual_information,
    nll,
    predictive_entropy,
    predictive_variance,
    regression_moments,
    variation_ratio,
)

LN2 = math.log(2)


def _random_probs(t=7, n=200, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, n, c, generator=g, dtype=torch.float64).mul(2).softmax(-1)


def test_entropies_and_bald_by_hand():
    # input 0: two confident samples that disagree; input 1: two identical uniform samples
    probs = torch.tensor([[[1.0, 0.0], [0.5, 0.5]],
                          [[0.0, 1.0], [0.5, 0.5]]], dtype=torch.float64)
    torch.testing.assert_close(predictive_entropy(probs), torch.tensor([LN2, LN2], dtype=torch.float64))
    torch.testing.assert_close(expected_entropy(probs), torch.tensor([0.0, LN2], dtype=torch.float64))
    torch.testing.assert_close(mutual_information(probs), torch.tensor([LN2, 0.0], dtype=torch.float64))


def test_entropies_by_hand_three_classes():
    probs = torch.tensor([[[0.2, 0.3, 0.5]], [[0.6, 0.3, 0.1]]], dtype=torch.float64)
    mean = [0.4, 0.3, 0.3]
    pe = -sum(p * math.log(p) for p in mean)
    ee = -(sum(p * math.log(p) for p in (0.2, 0.3, 0.5)) + sum(p * math.log(p) for p in (0.6, 0.3, 0.1))) / 2
    torch.testing.assert_close(predictive_entropy(probs), torch.tensor([pe], dtype=torch.float64))
    torch.testing.assert_close(expected_entropy(probs), torch.tensor([ee], dtype=torch.float64))
    torch.testing.assert_close(mutual_information(probs), torch.tensor([pe - ee], dtype=torch.float64))


def test_variation_ratio_by_hand():
    # votes over 4 samples: input 0 -> classes 0,0,0,1 ; input 1 -> 2,1,0,2
    votes = torch.tensor([[0, 2], [0, 1], [0, 0], [1, 2]])
    probs = torch.nn.functional.one_hot(votes, 3).double() * 0.8 + 0.2 / 3
    torch.testing.assert_close(variation_ratio(probs), torch.tensor([0.25, 0.5], dtype=torch.float64))


def test_predictive_variance_and_regression_moments_by_hand():
    means = torch.tensor([[1.0], [3.0]], dtype=torch.float64)  # T=2, N=1
    torch.testing.assert_close(predictive_variance(means), torch.tensor([1.0], dtype=torch.float64))
    mu, var = regression_moments(means)
    torch.testing.assert_close(mu, torch.tensor([2.0], dtype=torch.float64))
    torch.testing.assert_close(var, torch.tensor([1.0], dtype=torch.float64))
    mu, var = regression_moments(means, torch.tensor([[0.5], [1.5]], dtype=torch.float64))
    torch.testing.assert_close(var, torch.tensor([2.0], dtype=torch.float64))  # 1 epistemic + 1 aleatoric
    with pytest.raises(ValueError, match="variances must match"):
        regression_moments(means, torch.ones(3, 1))


def test_gaussian_nll_by_hand_and_against_torch():
    value = gaussian_nll(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([1.0]))
    assert value.item() == pytest.approx(0.5 * (math.log(2 * math.pi) + 1.0))
    g = torch.Generator().manual_seed(0)
    mean, target = torch.randn(50, generator=g), torch.randn(50, generator=g)
    var = torch.rand(50, generator=g) + 0.1
    expected = torch.nn.GaussianNLLLoss(full=True, eps=1e-6)(mean, target, var)
    torch.testing.assert_close(gaussian_nll(mean, var, target), expected)


def test_ece_by_hand():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct): bins (0.8667, 0.9333] and (0.6 - 1/15, 0.6]
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]], dtype=torch.float64)
    target = torch.tensor([0, 1, 1])
    expected = (2 / 3) * abs(0.5 - 0.9) + (1 / 3) * abs(1.0 - 0.6)
    assert expected_calibration_error(probs, target).item() == pytest.approx(expected)
    # perfectly calibrated and confident
    assert expected_calibration_error(torch.eye(3, dtype=torch.float64), torch.arange(3)).item() == 0.0


def test_ece_matches_torchmetrics():
    torchmetrics = pytest.importorskip("torchmetrics")
    probs = _random_probs().mean(0)
    target = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(1))
    metric = torchmetrics.classification.MulticlassCalibrationError(num_classes=4, n_bins=15, norm="l1")
    expected = metric(probs.float(), target)
    assert expected_calibration_error(probs, target).item() == pytest.approx(expected.item(), abs=1e-6)


def test_brier_and_nll_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    probs = _random_probs(seed=3).mean(0)
    target = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(2))
    y, p = target.numpy(), probs.numpy()
    assert brier_score(probs, target).item() == pytest.approx(
        metrics.brier_score_loss(y, p, labels=[0, 1, 2, 3]), rel=1e-9)
    assert nll(probs, target).item() == pytest.approx(metrics.log_loss(y, p, labels=[0, 1, 2, 3]), rel=1e-9)


def test_brier_and_nll_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], dtype=torch.float64)
    target = torch.tensor([0, 2])
    assert brier_score(probs, target).item() == pytest.approx(((0.09 + 0.04 + 0.01) + (0.01 + 0.64 + 0.81)) / 2)
    assert nll(probs, target).item() == pytest.approx(-(math.log(0.7) + math.log(0.1)) / 2)
    assert math.isfinite(nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1])).item())


def test_bald_nonnegative_and_bounded_on_random_samples():
    probs = _random_probs()
    mi = mutual_information(probs)
    assert bool((mi >= 0).all()) and bool((mi <= predictive_entropy(probs) + 1e-12).all())
    assert np.isfinite(mi.numpy()).all()


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match=r"\(T, N, C\)"):
        predictive_entropy(torch.ones(3, 2))
    with pytest.raises(ValueError, match="target must be integer class labels"):
        nll(torch.ones(3, 2) / 2, torch.ones(3))
    with pytest.raises(ValueError, match="n_bins must be a positive int"):
        expected_calibration_error(torch.ones(3, 2) / 2, torch.zeros(3, dtype=torch.long), n_bins=0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        gaussian_nll(torch.zeros(1), torch.ones(1), torch.zeros(1), reduction="avg")
