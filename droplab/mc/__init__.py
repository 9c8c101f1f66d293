"""Monte-Carlo dropout: batched sampling with the deterministic prefix cached, uncertainty metrics,
and the comparison of MC averaging with the weight-scaling rule.

Needs only torch. ``predict`` is the entry point; the metrics take the ``(T, N, C)`` samples it returns.
"""

from .metrics import (
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
from .prediction import METHODS, MCResult, predict, sample_loop
from .weight_scaling import compare_to_weight_scaling

__all__ = [
    "METHODS",
    "MCResult",
    "predict",
    "sample_loop",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "variation_ratio",
    "predictive_variance",
    "regression_moments",
    "gaussian_nll",
    "expected_calibration_error",
    "brier_score",
    "nll",
    "compare_to_weight_scaling",
]
