r"""Regression in the lab: MSE (or a Gaussian NLL head), RMSE/MAE/R², MC-dropout uncertainty, a verdict.

Targets are standardized with the training split's statistics for training; every reported number
(RMSE, MAE, log-likelihood) is in the data's own units.

Monte-Carlo dropout as in Gal & Ghahramani (ICML 2016). With :math:`T` sampled predictions
:math:`\hat y_t` and model precision :math:`\tau`, the predictive distribution is the mixture
:math:`\frac1T\sum_t \mathcal N(y;\hat y_t, \tau^{-1} I)`, with mean :math:`\bar y = \frac1T\sum_t
\hat y_t` and variance :math:`\tau^{-1} + \frac1T\sum_t \hat y_t^2 - \bar y^2`. The test
log-likelihood is

.. math::
    \log p(y \mid x) = \operatorname{logsumexp}_t\bigl(-\tfrac\tau2 \lVert y - \hat y_t\rVert^2\bigr) - \log T
                       - \tfrac k2 \log 2\pi + \tfrac k2 \log\tau .

The paper derives :math:`\tau = p_{keep}\, l^2 / (2 N \lambda)` from the prior length-scale :math:`l`
and weight decay :math:`\lambda`; like the paper's UCI experiments, the lab picks :math:`\tau` by
validation log-likelihood (a grid over :math:`10^{-1} \ldots 10^{3}` in standardized units), since
the lab's default weight decay is 0. The weight-scaled (eval-mode) pass gets its own maximum-likelihood
precision :math:`1/\mathrm{MSE}_{val}`, so the two are compared fairly. With ``nll_head`` the network
predicts a log-variance per target and :math:`\tau` is not needed (Kendall & Gal, NeurIPS 2017).

Coverage: the share of test targets inside the central 90% interval :math:`\bar y \pm 1.645\,\sigma`;
the calibration curve repeats it for levels 10% ... 99% (a calibrated model lies on the diagonal).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from . import forward_in_batches

__all__ = ["TABLE_COLUMNS", "loss", "output_size", "split_metrics", "epoch_metrics", "summary", "final_metrics",
           "mc_uncertainty", "log_likelihood", "fit_tau", "interval_coverage", "verdict", "LEVELS"]

TABLE_COLUMNS = (
    ("train_rmse", "train RMSE", "{:.4g}"), ("val_rmse", "val RMSE", "{:.4g}"),
    ("best_val_rmse", "best val RMSE", "{:.4g}"), ("test_rmse", "test RMSE", "{:.4g}"),
    ("test_mae", "test MAE", "{:.4g}"), ("test_r2", "test R2", "{:.3f}"), ("gap", "gap", "{:.4g}"),
    ("test_ll_mc", "test LL (MC)", "{:.3f}"), ("test_ll_ws", "test LL (weight sc.)", "{:.3f}"),
    ("coverage90_mc", "90% cover", "{:.2f}"), ("best_epoch", "epochs to best", "{:d}"),
    ("wall_time_s", "wall s", "{:.1f}"),
)

#: interval levels of the calibration curve
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
_LOG_2PI = math.log(2 * math.pi)


def output_size(n_outputs: int, nll_head: bool = False) -> int:
    """Outputs the model needs: one per target, two (mean, log-variance) with the NLL head."""
    return 2 * n_outputs if nll_head else n_outputs


def _mean_and_log_var(output: torch.Tensor, nll_head: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not nll_head:
        return output, None
    mean, log_var = output.chunk(2, dim=-1)
    return mean, log_var.clamp(-12.0, 12.0)


def loss(output: torch.Tensor, target: torch.Tensor, nll_head: bool = False) -> torch.Tensor:
    """MSE on standardized targets, or the Gaussian NLL ``GaussianNLLLoss(full=True)`` with the head."""
    mean, log_var = _mean_and_log_var(output, nll_head)
    if mean.shape != target.shape:
        raise ValueError(f"the model's output {tuple(output.shape)} does not fit the targets {tuple(target.shape)}"
                         + (" (the NLL head needs 2 outputs per target)" if nll_head else ""))
    if log_var is None:
        return F.mse_loss(mean, target)
    return 0.5 * (log_var + (target - mean) ** 2 * torch.exp(-log_var) + _LOG_2PI).mean()


def _units(splits, device) -> torch.Tensor:
    return splits.target_std.to(device) if splits is not None and splits.target_std is not None else \
        torch.ones((), device=device)


def split_metrics(model: nn.Module, split, splits=None, nll_head: bool = False, device: str = "cpu") -> dict:
    """``{"loss", "rmse", "mae", "r2"}``: loss in standardized units, RMSE and MAE in the data's units."""
    output = forward_in_batches(model, split.x.to(device)).float()
    y = split.y.to(device)
    mean, _ = _mean_and_log_var(output, nll_head)
    error = (mean - y) * _units(splits, device)
    total = ((y - y.mean(0)) ** 2).sum(0).clamp_min(1e-12)
    r2 = (1 - ((mean - y) ** 2).sum(0) / total).mean()
    return {"loss": loss(output, y, nll_head).item(), "rmse": error.pow(2).mean().sqrt().item(),
            "mae": error.abs().mean().item(), "r2": r2.item()}


def epoch_metrics(model: nn.Module, splits, nll_head: bool = False, device: str = "cpu") -> dict:
    """Every split's loss, RMSE, MAE and R², and the gap (validation - training RMSE)."""
    metrics = {}
    for name in ("train", "val", "test"):
        for key, value in split_metrics(model, getattr(splits, name), splits, nll_head, device).items():
            metrics[f"{name}_{key}"] = value
    metrics["gap"] = metrics["val_rmse"] - metrics["train_rmse"]
    return metrics


def summary(history: list[dict]) -> dict:
    """Final and best metrics (best epoch = lowest validation loss, the early-stopping criterion)."""
    last = history[-1]
    best = min(history, key=lambda m: m["val_loss"])
    out = {f"{split}_{key}": last[f"{split}_{key}"] for split in ("train", "val", "test")
           for key in ("loss", "rmse", "mae", "r2")}
    out.update({"best_train_rmse": min(m["train_rmse"] for m in history),
                "best_val_rmse": min(m["val_rmse"] for m in history), "best_val_loss": best["val_loss"],
                "best_train_loss": min(m["train_loss"] for m in history),
                "best_epoch": best["epoch"], "test_rmse_at_best": best["test_rmse"],
                "gap": last["gap"], "gap_at_best": best["gap"]})
    return out


# Monte-Carlo uncertainty ---------------------------------------------------------------------------------------


def log_likelihood(samples: torch.Tensor, y: torch.Tensor, tau: float | None = None,
                   log_var: torch.Tensor | None = None) -> torch.Tensor:
    r"""Per-example log-likelihood of ``y`` ``(N, k)`` under the mixture of ``T`` Gaussians ``(T, N, k)``.

    Homoscedastic with precision ``tau``, or with per-sample ``log_var`` ``(T, N, k)``.

    Example (one sample, unit precision: the standard normal density at 0)::

        >>> ll = log_likelihood(torch.zeros(1, 1, 1), torch.zeros(1, 1), tau=1.0)
        >>> round(float(ll), 4) == round(-0.5 * math.log(2 * math.pi), 4)
        True
    """
    if log_var is None:
        log_var = torch.full_like(samples, -math.log(tau))
    per_sample = -0.5 * (log_var + (y - samples) ** 2 * torch.exp(-log_var) + _LOG_2PI).sum(-1)  # (T, N)
    return torch.logsumexp(per_sample, dim=0) - math.log(samples.shape[0])


def fit_tau(samples: torch.Tensor, y: torch.Tensor) -> float:
    """The precision maximizing the mean log-likelihood of ``y`` on a log grid (standardized units)."""
    grid = torch.logspace(-1, 3, 81, dtype=samples.dtype)
    scores = torch.stack([log_likelihood(samples, y, float(t)).mean() for t in grid])
    return float(grid[int(scores.argmax())])


def interval_coverage(mean: torch.Tensor, variance: torch.Tensor, y: torch.Tensor,
                      levels=LEVELS) -> list[float]:
    """Share of ``y`` inside the central Gaussian interval of each level (``mean +- z sigma``)."""
    z = [math.sqrt(2) * float(torch.special.erfinv(torch.tensor(level, dtype=torch.float64))) for level in levels]
    distance = (y - mean).abs() / variance.clamp_min(1e-12).sqrt()
    return [float((distance <= zi).double().mean()) for zi in z]


def _mc_samples(model: nn.Module, x: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    from ... import mc, sites

    if not any(s.p > 0 for s in sites(model)):  # no stochastic site: every sample is the eval pass
        return _eval_output(model, x)[None]
    with torch.no_grad():
        return mc.predict(model, x, samples=samples, seed=seed).samples.float()


def _eval_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return forward_in_batches(model, x).float()
    finally:
        model.train(was_training)


def _predictive(samples: torch.Tensor, y_val, samples_val, nll_head: bool) -> dict:
    """Mean, variance, and either ``tau`` or the per-sample log-variances of one pass (MC or weight-scaled)."""
    if nll_head:
        mean, log_var = _mean_and_log_var(samples, True)
        from ...mc import regression_moments

        mu, var = regression_moments(mean, torch.exp(log_var))
        return {"samples": mean, "log_var": log_var, "tau": None, "mean": mu, "var": var}
    if samples_val.shape[0] == 1:
        tau = 1.0 / float(((samples_val[0] - y_val) ** 2).mean().clamp_min(1e-12))  # maximum likelihood
    else:
        tau = fit_tau(samples_val, y_val)
    return {"samples": samples, "log_var": None, "tau": tau, "mean": samples.mean(0),
            "var": samples.var(0, unbiased=False) + 1.0 / tau}


def mc_uncertainty(model: nn.Module, splits, *, samples: int = 50, seed: int = 0, nll_head: bool = False,
                   device: str = "cpu") -> dict:
    """MC dropout against the weight-scaled pass on the test split: log-likelihood, RMSE, coverage, tau."""
    x_val, y_val = splits.val.x.to(device), splits.val.y.to(device).float()
    x_test, y_test = splits.test.x.to(device), splits.test.y.to(device).float()
    log_std = float(torch.log(_units(splits, "cpu").expand(y_test.shape[-1])).sum())
    std = _units(splits, device)
    passes = {"mc": (_mc_samples(model, x_test, samples, seed), _mc_samples(model, x_val, samples, seed + 1)),
              "ws": (_eval_output(model, x_test)[None], _eval_output(model, x_val)[None])}
    out: dict = {"mc_samples": samples, "levels": list(LEVELS)}
    for key, (test_samples, val_samples) in passes.items():
        val_mean = _mean_and_log_var(val_samples, nll_head)[0]
        pred = _predictive(test_samples, y_val, val_mean, nll_head)
        ll = log_likelihood(pred["samples"], y_test, pred["tau"], pred["log_var"]) - log_std
        out[f"test_ll_{key}"] = float(ll.mean())
        out[f"test_rmse_{key}"] = float(((pred["mean"] - y_test) * std).pow(2).mean().sqrt())
        out[f"coverage90_{key}"] = interval_coverage(pred["mean"], pred["var"], y_test, (0.9,))[0]
        out[f"calibration_{key}"] = interval_coverage(pred["mean"], pred["var"], y_test)
        if pred["tau"] is not None:  # reported in the data's units (one target) or standardized ones
            out[f"tau_{key}"] = pred["tau"] / float(std.reshape(-1)[0]) ** 2 if y_test.shape[-1] == 1 \
                else pred["tau"]
    return out


def final_metrics(model: nn.Module, splits, config) -> dict:
    """:func:`mc_uncertainty` with 50 samples seeded by the run's seed."""
    return mc_uncertainty(model, splits, samples=50, seed=int(config.seed), nll_head=config.nll_head,
                          device=config.device)


# the verdict ---------------------------------------------------------------------------------------------------


def _get(summary: dict, key: str, role: str) -> float:
    if summary.get(key) is None:
        raise ValueError(f"the {role} summary needs {key!r} (has {sorted(summary)})")
    return float(summary[key])


def _outcome(d_val: float, d_gap: float, d_train: float, base_gap: float, tol: float, reduced_better: bool):
    """The outcome code from RMSE differences (intended - baseline; lower RMSE is better)."""
    improved, held, worse = d_val < -tol, abs(d_val) <= tol, d_val > tol
    gap_reduced = d_gap < -2 * tol
    if base_gap < 5 * tol and not improved:
        return "no_overfitting"
    if d_train > 10 * tol and not improved:
        return "too_aggressive"
    if reduced_better and (improved or held):
        return "reduce_rate"
    if improved:
        return "helps"
    if gap_reduced and held:
        return "regularizes"
    return "hurts" if worse else "inconclusive"


_HEADLINES = {
    "no_overfitting": "Little overfitting to fix: without dropout validation RMSE is only {base_gap:.4g} above "
                      "training RMSE, and dropout does not lower it.",
    "too_aggressive": "Dropout is too aggressive or badly placed: {intended} fits the training data {d_train:.4g} "
                      "RMSE worse than the baseline without a validation gain (underfitting).",
    "reduce_rate": "Dropout helps, but the reduced rate {reduced} beats {intended} on validation RMSE: lower the "
                   "rate.",
    "helps": "Dropout helps: {intended} lowers the best validation RMSE by {gain:.4g} ({pct:.1f}%).",
    "regularizes": "Dropout regularizes ({intended} narrows the train/validation RMSE gap by {gap_gain:.4g}) but "
                   "validation RMSE only holds.",
    "hurts": "Dropout hurts: {intended} raises the best validation RMSE by {loss:.4g}.",
    "inconclusive": "Inconclusive: dropout changes neither the gap nor validation RMSE beyond the tolerance.",
}


def verdict(baseline: dict, intended: dict, reduced: dict | None = None, *, tolerance: float = 0.01):
    """The three-run rule in RMSE: lower validation RMSE is better, the gap is validation - training RMSE.

    ``tolerance`` is relative to the baseline's best validation RMSE (1%): a smaller change is "held".
    Returns a :class:`droplab.diagnostics.verdict.Verdict`.

    Example::

        >>> verdict({"train_rmse": 40.0, "best_val_rmse": 60.0, "val_rmse": 62.0},
        ...         {"train_rmse": 50.0, "best_val_rmse": 55.0, "val_rmse": 55.0}).outcome
        'helps'
    """
    from ...diagnostics import Verdict

    runs = {"baseline": baseline, "intended": intended, **({"reduced": reduced} if reduced is not None else {})}
    val = {role: _get(s, "best_val_rmse", role) for role, s in runs.items()}
    train = {role: _get(s, "train_rmse", role) for role, s in runs.items()}
    gap = {role: _get(s, "val_rmse", role) - train[role] for role, s in runs.items()}
    label = {role: str(s.get("label") or role) for role, s in runs.items()}
    tol = tolerance * val["baseline"]
    reduced_better = reduced is not None and val["intended"] - val["reduced"] > tol
    outcome = _outcome(val["intended"] - val["baseline"], gap["intended"] - gap["baseline"],
                       train["intended"] - train["baseline"], gap["baseline"], tol, reduced_better)
    headline = _HEADLINES[outcome].format(
        intended=label["intended"], reduced=label.get("reduced", ""), base_gap=gap["baseline"],
        d_train=train["intended"] - train["baseline"], gain=val["baseline"] - val["intended"],
        pct=100 * (val["baseline"] - val["intended"]) / val["baseline"], loss=val["intended"] - val["baseline"],
        gap_gain=gap["baseline"] - gap["intended"])
    reasons = [f"best validation RMSE: {val['baseline']:.4g} without dropout, {val['intended']:.4g} with "
               f"{label['intended']}",
               f"train/validation gap (val - train RMSE): {gap['baseline']:.4g} without dropout, "
               f"{gap['intended']:.4g} with {label['intended']}",
               f"training RMSE: {train['baseline']:.4g} without dropout, {train['intended']:.4g} with "
               f"{label['intended']}"]
    if reduced is not None:
        reasons.append(f"reduced rate {label['reduced']}: best validation RMSE {val['reduced']:.4g}, gap "
                       f"{gap['reduced']:.4g}" + (" (better than the intended rate)" if reduced_better else ""))
    return Verdict(outcome, headline, reasons, label[min(runs, key=lambda role: val[role])])
