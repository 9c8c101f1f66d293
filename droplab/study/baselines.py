"""Baselines the study reproduces before it judges anything: the MNIST-1D paper's table and OLS on diabetes.

If the data, the models or the trainer were off, every verdict built on them would be too; so the study first
reproduces published numbers with the same pipeline, and a claim that relies on a baseline that is off gets
its verdicts withheld.

* **MNIST-1D** (Greydanus 2020, "Scaling down deep learning", table 1 / the repository's README): test
  accuracy of logistic regression 32%, MLP 68%, CNN 94%, GRU 91%. Reproduced with the paper's protocol on
  fresh draws: the draw's 4000 training signals, Adam at learning rate 0.01, batch 100, 6000 steps (150
  epochs), the final model's test accuracy (no model selection). The models are the lab's: ``linear``,
  ``mlp`` (2 hidden layers of 100 ReLU units), ``mnist1d_cnn`` and ``mnist1d_gru`` (the paper's ConvBase and
  bidirectional 6-unit GRUBase). **Tolerance: 5 accuracy points** (the paper reports one run; one run's test
  accuracy on 1000 examples has a sampling standard deviation of about 1.5 points at 68%, and training and
  the draw add about as much again, so 5 points is about three standard deviations of a single run).
* **diabetes** (Efron, Hastie, Johnstone, Tibshirani 2004, "Least angle regression", the data's source):
  ordinary least squares on all 442 patients explains R² = 0.518 of the target's variance. Reproduced exactly
  (tolerance 0.005: a data check), and on each of the study's 60/20/20 splits the held-out RMSE of OLS is the
  reference the dropout network of claim 10 is compared with.
"""

from __future__ import annotations

import math

__all__ = ["BASELINES", "run_baseline", "judge_baselines"]

#: name -> (what, published value, tolerance, unit, citation)
BASELINES = {
    "mnist1d-logistic": ("logistic regression, MNIST-1D test accuracy", 0.32, 0.05, "accuracy",
                         "Greydanus 2020, table 1"),
    "mnist1d-mlp": ("MLP, MNIST-1D test accuracy", 0.68, 0.05, "accuracy", "Greydanus 2020, table 1"),
    "mnist1d-cnn": ("CNN, MNIST-1D test accuracy", 0.94, 0.05, "accuracy", "Greydanus 2020, table 1"),
    "mnist1d-gru": ("GRU, MNIST-1D test accuracy", 0.91, 0.05, "accuracy", "Greydanus 2020, table 1"),
    "diabetes-ols": ("OLS on all 442 diabetes patients, R²", 0.518, 0.005, "R²", "Efron et al. 2004, table 1"),
}

_STEPS = {"quick": 1000, "default": 6000, "confirm": 6000}  # the paper trains 6000 steps of batch 100


def _mnist1d(name: str, seed: int, tier: str) -> dict:
    from ..lab import models
    from .data import mnist1d
    from .training import fit

    builders = {"mnist1d-logistic": lambda s, n: models.linear(s, n),
                "mnist1d-mlp": lambda s, n: models.mlp(s, n, width=100, depth=2, dropout=0.0, seed=seed),
                "mnist1d-cnn": lambda s, n: models.mnist1d_cnn(s, n),
                "mnist1d-gru": lambda s, n: models.mnist1d_gru(s, n)}
    splits = mnist1d(seed, full_train=True)
    epochs = _STEPS[tier] * 100 // len(splits.train)
    trained = fit(builders[name], splits, seed=seed, epochs=epochs, lr=1e-2, batch_size=100)
    last = trained.history[-1]
    return {"value": float(last["test_acc"]), "epochs_run": trained.epochs_run, "train_acc": float(last["train_acc"]),
            "curve": [round(float(row["test_acc"]), 4) for row in trained.history]}


def _ols(seed: int) -> dict:
    import numpy as np
    from sklearn.datasets import load_diabetes

    from .data import diabetes

    x, y = load_diabetes(return_X_y=True)
    design = np.c_[np.ones(len(y)), x]
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    r2 = 1 - float(((y - design @ coef) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    splits = diabetes(seed)
    x_train, y_train = splits.train.x.double().numpy(), splits.train.y.double().numpy()[:, 0]
    x_test, y_test = splits.test.x.double().numpy(), splits.test.y.double().numpy()[:, 0]
    d_train = np.c_[np.ones(len(y_train)), x_train]
    beta, *_ = np.linalg.lstsq(d_train, y_train, rcond=None)
    scale = float(splits.target_std[0])
    rmse = float(np.sqrt(((np.c_[np.ones(len(y_test)), x_test] @ beta - y_test) ** 2).mean())) * scale
    return {"value": r2, "test_rmse": rmse}


def run_baseline(name: str, seed: int, tier: str) -> dict:
    """One run of baseline ``name`` on ``seed``: ``{"value": ...}`` plus what it measured on the way."""
    if name not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, but got {name!r}")
    if name == "diabetes-ols":
        return _ols(seed)
    return _mnist1d(name, seed, tier)


def judge_baselines(runs: dict[str, list[dict]], judged: bool) -> dict[str, dict]:
    """Each baseline's mean over its seeds against the published value: ``ok`` within the tolerance.

    ``ok`` is None (not judged) when ``judged`` is False (the quick tier's shortened training).
    """
    out = {}
    for name, rows in runs.items():
        what, published, tolerance, unit, citation = BASELINES[name]
        values = [row["value"] for row in rows]
        mean = math.fsum(values) / len(values) if values else None
        ok = None if not judged or mean is None else abs(mean - published) <= tolerance
        out[name] = {"what": what, "published": published, "tolerance": tolerance, "unit": unit,
                     "citation": citation, "values": values, "mean": mean, "ok": ok,
                     "epochs_run": [row.get("epochs_run") for row in rows],
                     **({"test_rmse": [row["test_rmse"] for row in rows]} if name == "diabetes-ols" else {})}
    return out
