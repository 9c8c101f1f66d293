"""The study's data: MNIST-1D (the lab's offline generator and cache), scikit-learn's digits and diabetes.

Every loader returns train / validation / test tensors standardized with training statistics; the
split is a function of ``seed``, so each seed of a claim sees a different split (MNIST-1D keeps its
own test set and draws validation from its training part).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

__all__ = ["classification", "diabetes", "subsample", "Split", "Classification", "Regression"]


class Split(SimpleNamespace):
    """``x`` float32 ``(N, F)``, ``y`` int64 ``(N,)``."""


class Classification(SimpleNamespace):
    """``train``, ``val``, ``test`` (:class:`Split`), ``n_features``, ``n_classes``."""


def _standardized(parts: list[tuple[np.ndarray, np.ndarray]]) -> list[Split]:
    mean, std = parts[0][0].mean(0), parts[0][0].std(0)
    std[std < 1e-8] = 1.0  # constant features (digits' blank corners) stay zero
    return [Split(x=torch.from_numpy(((x - mean) / std).astype(np.float32)), y=torch.from_numpy(y.astype(np.int64)))
            for x, y in parts]


def classification(name: str = "mnist1d", seed: int = 0) -> Classification:
    """``mnist1d`` (3200 train / 800 val / 1000 test, 40 features) or ``digits`` (60/20/20 of 1797, 64 features).

    Example::

        >>> data = classification("digits", seed=0)
        >>> data.n_features, data.n_classes, len(data.train.y)
        (64, 10, 1079)
    """
    if name == "mnist1d":
        from ..lab.data import mnist1d_arrays

        arrays = mnist1d_arrays()
        x, y = arrays["x"].astype(np.float64), arrays["y"]
        perm = np.random.default_rng(seed).permutation(len(y))
        val, train = perm[:len(y) // 5], perm[len(y) // 5:]
        parts = [(x[train], y[train]), (x[val], y[val]), (arrays["x_test"].astype(np.float64), arrays["y_test"])]
    elif name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x, y = bunch.data.astype(np.float64), bunch.target
        perm = np.random.default_rng(seed).permutation(len(y))
        n = len(y) // 5
        test, val, train = perm[:n], perm[n:2 * n], perm[2 * n:]
        parts = [(x[train], y[train]), (x[val], y[val]), (x[test], y[test])]
    else:
        raise ValueError(f"dataset must be 'mnist1d' or 'digits', but got {name!r}")
    train, val, test = _standardized(parts)
    return Classification(train=train, val=val, test=test, n_features=train.x.shape[1], n_classes=10)


def subsample(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` rows of a seeded permutation (a smaller training set for the data-size claims)."""
    if n > len(y):
        raise ValueError(f"cannot take {n} examples from a split of {len(y)}")
    index = torch.from_numpy(np.random.default_rng(seed).permutation(len(y))[:n])
    return x[index], y[index]


class Regression(SimpleNamespace):
    """``x_train, y_train, x_val, y_val, x_test, y_test`` float32 tensors (targets ``(N,)``) and ``y_scale``."""


def diabetes(seed: int = 0) -> Regression:
    """scikit-learn's diabetes (442 x 10, bundled): 60/20/20 split, features and target standardized.

    ``y_scale`` is the target's training standard deviation (multiply errors by it for original units).
    """
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.float64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test, n_val = len(y) // 5, len(y) // 5
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    mean, std = x[train].mean(0), x[train].std(0)
    y_mean, y_std = y[train].mean(), y[train].std()

    def tensors(index):
        return (torch.from_numpy(((x[index] - mean) / std).astype(np.float32)),
                torch.from_numpy(((y[index] - y_mean) / y_std).astype(np.float32)))

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = tensors(train), tensors(val), tensors(test)
    return Regression(x_train=x_tr, y_train=y_tr, x_val=x_va, y_val=y_va, x_test=x_te, y_test=y_te,
                      y_scale=float(y_std))
