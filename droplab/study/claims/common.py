"""What several claims share: the data of a seed, the MLP arms on MNIST-1D, and each arm's summary.

Every classifier of the study trains through :func:`droplab.study.training.fit` with the same protocol: AdamW
(weight decay 0 unless a claim varies it), batch 100, evaluation after every epoch, the best-validation-
accuracy checkpoint, and a patience so each arm stops when its own validation curve has turned (never at a
fixed epoch count that would cut the slower arm short). ``EPOCHS`` caps runs that never turn; a run that
reaches the cap while still improving is marked censored, and the report counts those.

:func:`mlp_arm` is the 40-256-256-10 MLP most claims compare with and without dropout; because its key names
the model, the data and the training arguments, a claim asking for a run another claim already trained on the
same seed loads it (see :mod:`droplab.study.training`).
"""

from __future__ import annotations

import functools

from ...lab import models
from ..data import mnist1d
from ..training import Trained, fit

__all__ = ["EPOCHS", "PATIENCE", "LR_CANDIDATES", "epochs", "patience", "mnist1d_splits", "mlp_arm", "summary",
           "accuracy_sesoi", "ACCURACY_REASON"]

#: the most epochs a run may take (default/confirm tiers) and in the quick tier
EPOCHS = {"quick": 25, "default": 250, "confirm": 250}
#: epochs without a better validation accuracy before a run stops
PATIENCE = {"quick": 8, "default": 15, "confirm": 15}
#: the learning rates each MLP arm is tuned over (AdamW)
LR_CANDIDATES = ({"lr": 3e-3}, {"lr": 1e-3})

#: the smallest accuracy difference of interest on MNIST-1D's 1000 test signals, and why
accuracy_sesoi = 0.01
ACCURACY_REASON = ("1 accuracy point: the smallest change a practitioner would act on (about 3% of the errors at "
                   "MNIST-1D's 65-70% accuracy), and below one run's test-set noise (about 1.5 points), so only a "
                   "difference averaged over seeds can show it")


def epochs(tier: str) -> int:
    return EPOCHS[tier]


def patience(tier: str) -> int:
    return PATIENCE[tier]


@functools.lru_cache(maxsize=4)
def mnist1d_splits(seed: int):
    """The seed's fresh MNIST-1D draw (cached in the process: the arms of a seed share it)."""
    return mnist1d(seed)


def mlp_arm(seed: int, tier: str, *, lr: float, p: float = 0.0, width: int = 256, depth: int = 2,
            variant: str = "dropout", batchnorm: str = "none", layer_rates: list[float] | None = None,
            splits=None, data: str = "mnist1d", weight_decay: float = 0.0, augment: bool = False,
            optimizer: str = "adamw", momentum: float = 0.9, max_norm: float | None = None,
            schedule: str | None = None,
            max_epochs: int | None = None, patience_epochs: int | None = None, fixed: bool = False) -> Trained:
    """An MLP (:func:`droplab.lab.models.mlp`) trained on the seed's data with the study's protocol.

    ``fixed`` trains exactly ``max_epochs`` (no patience: for schedules defined over a fixed run)."""
    splits = splits if splits is not None else mnist1d_splits(seed)
    model_args = {"width": width, "depth": depth, "dropout": p, "variant": variant, "batchnorm": batchnorm,
                  "layer_rates": layer_rates}
    key = {"model": "mlp", **model_args, "data": data, "data_seed": seed, "n_train": len(splits.train)}
    return fit(lambda shape, n: models.mlp(shape, n, seed=seed, **model_args), splits, seed=seed,
               epochs=max_epochs or epochs(tier), lr=lr, optimizer=optimizer, momentum=momentum,
               weight_decay=weight_decay,
               augment=augment, max_norm=max_norm, schedule=schedule,
               patience=None if fixed else patience_epochs or patience(tier), key=key)


def summary(trained: Trained, *, curve: str = "val_acc") -> dict:
    """An arm's raw result: the best checkpoint's accuracies, the epochs, and its validation curve."""
    best = trained.best
    out = {"val_score": float(best["val_acc"]), "val_acc": float(best["val_acc"]), "test_acc": float(best["test_acc"]),
           "train_acc": float(best["train_acc"]), "test_loss": float(best["test_loss"]),
           "train_loss": float(best["train_loss"]), "gap": float(best["train_acc"] - best["val_acc"]),
           "best_epoch": trained.best_epoch, "epochs_run": trained.epochs_run, "censored": trained.censored,
           "train_cpu": trained.cpu_seconds, "family": trained.family}
    out["curve"] = [round(float(row[curve]), 4) for row in trained.history]
    return out
