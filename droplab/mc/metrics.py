r"""Uncertainty and calibration metrics for Monte-Carlo dropout, in plain torch.

Classification metrics take per-sample class probabilities ``probs`` of shape ``(T, N, C)`` (e.g.
``predict(...).samples.softmax(-1)``) and return one value per input, ``(N,)``. Calibration metrics
take the predictive distribution ``(N, C)`` (the MC mean) and integer targets ``(N,)``. Entropies
are in nats, with :math:`0 \log 0 = 0`.

References: Gal, Islam and Ghahramani, "Deep Bayesian Active Learning with Image Data", ICML 2017
(BALD, variation ratio); Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural
Networks", ICML 2017 (ECE); Brier, "Verification of forecasts expressed in terms of probability",
Monthly Weather Review 1950.
"""

from __future__ import annotations

import math

import torch

__all__ = [
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
]


def _check_samples(probs: torch.Tensor, name: str = "probs") -> None:
    if not isinstance(probs, torch.Tensor) or probs.dim() < 3:
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"{name} must be per-sample class probabilities of shape (T, N, C), but got {shape}")


def _check_predictive(probs: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2:
        raise ValueError(f"probs must be class probabilities of shape (N, C), but got {getattr(probs, 'shape', probs)}")
    if not isinstance(target, torch.Tensor) or target.shape != probs.shape[:1] or target.is_floating_point():
        raise ValueError(f"target must be integer class labels of shape ({probs.shape[0]},), but got "
                         f"{getattr(target, 'dtype', type(target).__name__)} {tuple(getattr(target, 'shape', ()))}")


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(probs, probs).sum(-1)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    r"""Entropy of the MC-averaged prediction, :math:`H[\bar p]`, :math:`\bar p = \frac1T\sum_t p_t`.

    Total uncertainty: high where the averaged prediction is spread out. ``(T, N, C) -> (N,)``.

    Example::

        >>> predictive_entropy(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))  # two confident, opposite samples
        tensor([0.6931])
    """
    _check_samples(probs)
    return _entropy(probs.mean(0))


def expected_entropy(probs: torch.Tensor) -> torch.Tensor:
    r"""Mean entropy of the individual samples, :math:`\frac1T\sum_t H[p_t]` (aleatoric part).

    ``(T, N, C) -> (N,)``.
    """
    _check_samples(probs)
    return _entropy(probs).mean(0)


def mutual_information(probs: torch.Tensor) -> torch.Tensor:
    r"""BALD: :math:`I[y; \omega] = H[\bar p] - \frac1T\sum_t H[p_t]`, the epistemic part.

    Zero when every sample predicts the same distribution; clamped at 0 against rounding.
    ``(T, N, C) -> (N,)``.
    """
    return (predictive_entropy(probs) - expected_entropy(probs)).clamp_min(0.0)


def variation_ratio(probs: torch.Tensor) -> torch.Tensor:
    r"""Share of samples that disagree with the modal class: :math:`1 - f_{mode}/T`.

    Each sample votes for its arg-max class (ties go to the lowest index). ``(T, N, C) -> (N,)``.
    """
    _check_samples(probs)
    votes = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).sum(0)
    return 1.0 - votes.max(-1).values.to(probs.dtype) / probs.shape[0]


def predictive_variance(samples: torch.Tensor) -> torch.Tensor:
    r"""Variance over the sample axis, :math:`\frac1T\sum_t (y_t - \bar y)^2`, per output.

    ``(T, N, *) -> (N, *)``. For classifiers pass probabilities and sum over the class axis for
    one score per input.
    """
    if not isinstance(samples, torch.Tensor) or samples.dim() < 2:
        shape = getattr(samples, "shape", samples)
        raise ValueError(f"samples must have the sample axis first, (T, N, ...), but got {shape}")
    return samples.var(0, unbiased=False)


def regression_moments(means: torch.Tensor, variances: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Predictive mean and variance of an MC regression ensemble.

    :math:`\mu = \frac1T\sum_t \mu_t`, :math:`\sigma^2 = \frac1T\sum_t (\mu_t - \mu)^2 + \frac1T\sum_t
    \sigma_t^2`: the epistemic spread of the sampled means plus, when the network also predicts a
    variance per sample (``variances``, same shape as ``means``), the mean aleatoric variance
    (Kendall and Gal, NeurIPS 2017).

    Args:
        means: sampled predictions ``(T, N, *)``.
        variances: per-sample predicted variances, or ``None`` (homoscedastic: epistemic only).
    """
    var = predictive_variance(means)
    if variances is not None:
        if variances.shape != means.shape:
            raise ValueError(f"variances must match means in shape {tuple(means.shape)}, "
                             f"but got {tuple(variances.shape)}")
        var = var + variances.mean(0)
    return means.mean(0), var


def gaussian_nll(mean: torch.Tensor, variance: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-6,
                 reduction: str = "mean") -> torch.Tensor:
    r"""Gaussian negative log-likelihood, :math:`\frac12\left(\log 2\pi\sigma^2 + (y-\mu)^2/\sigma^2\right)`.

    Includes the constant (as ``torch.nn.GaussianNLLLoss(full=True)``); ``variance`` is clamped to
    ``eps`` from below. ``reduction``: ``"mean"``, ``"sum"`` or ``"none"``. Default: ``"mean"``.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be one of ('mean', 'sum', 'none'), but got {reduction!r}")
    var = variance.clamp_min(eps)
    loss = 0.5 * (torch.log(var) + (target - mean) ** 2 / var + math.log(2 * math.pi))
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def expected_calibration_error(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    r"""ECE of Guo et al. (2017): :math:`\sum_m \frac{|B_m|}{N}\,|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|`.

    Confidence is the top-class probability; bin :math:`B_m` holds confidences in
    :math:`((m-1)/M, m/M]`, :math:`M` = ``n_bins`` (default 15). ``(N, C), (N,) -> ()``.
    """
    _check_predictive(probs, target)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, but got {n_bins!r}")
    confidence, predicted = probs.max(-1)
    correct = (predicted == target).to(probs.dtype)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=probs.dtype, device=probs.device)
    bins = torch.bucketize(confidence, edges[1:-1], right=False)  # right-closed bins, as in the paper
    count = torch.zeros(n_bins, dtype=probs.dtype, device=probs.device).index_add_(0, bins, torch.ones_like(correct))
    acc = torch.zeros_like(count).index_add_(0, bins, correct)
    conf = torch.zeros_like(count).index_add_(0, bins, confidence)
    return (acc - conf).abs().sum() / probs.shape[0]


def brier_score(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Multi-class Brier score: :math:`\frac1N\sum_n\sum_c (p_{nc} - [y_n = c])^2`. ``(N, C), (N,) -> ()``."""
    _check_predictive(probs, target)
    onehot = torch.nn.functional.one_hot(target, probs.shape[-1]).to(probs.dtype)
    return ((probs - onehot) ** 2).sum(-1).mean()


def nll(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Negative log-likelihood of the targets, :math:`-\frac1N\sum_n \log p_{n, y_n}`. ``(N, C), (N,) -> ()``.

    A probability of exactly 0 is clamped to the dtype's smallest normal number, so the value stays finite.
    """
    _check_predictive(probs, target)
    picked = probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return -torch.log(picked.clamp_min(torch.finfo(probs.dtype).tiny)).mean()
