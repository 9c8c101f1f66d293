"""The study's data, as the lab's :class:`~droplab.lab.data.Splits`: a fresh MNIST-1D draw per seed, digits, diabetes.

* MNIST-1D: :func:`mnist1d` generates the dataset with the ``mnist1d`` package's default arguments and its own
  generator seeded per study seed (a *fresh draw*: new templates' transformations, new noise, not a resplit of
  one fixed draw), cached as ``.npz`` under the lab's cache directory. The draw's 4000 training signals become
  3200 training and 800 validation examples, its 1000 test signals the test split. The signals are used as the
  package makes them (centered and scaled to unit standard deviation over the whole draw), as the MNIST-1D
  paper trains on them.
* digits (scikit-learn, 1797 8x8 images): 60/20/20, features standardized with training statistics.
* diabetes (scikit-learn, 442 x 10): 60/20/20, features and target standardized with training statistics;
  ``target_std`` puts the lab's RMSE back in the target's units.

Example::

    >>> splits = digits(seed=0)
    >>> splits.input_shape, splits.n_classes, len(splits.train)
    ((64,), 10, 1079)
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..lab.data import Split, Splits, cache_dir

__all__ = ["mnist1d", "mnist1d_arrays", "digits", "diabetes", "subsample", "draw_seed"]

#: MNIST-1D draws of the study are seeded ``DRAW_OFFSET + seed`` (the package's own default draw is seed 42)
DRAW_OFFSET = 100_000


def draw_seed(seed: int) -> int:
    """The ``mnist1d`` generator seed of study seed ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, but got {seed!r}")
    return DRAW_OFFSET + seed


def mnist1d_arrays(seed: int) -> dict[str, np.ndarray]:
    """The MNIST-1D draw of study seed ``seed``: ``x`` (4000, 40), ``y``, ``x_test`` (1000, 40), ``y_test``.

    Generated once (about 5 s) and cached; concurrent workers write the cache atomically.
    """
    path = cache_dir() / f"mnist1d_draw_{draw_seed(seed)}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ModuleNotFoundError:
        raise ModuleNotFoundError('the MNIST-1D dataset needs the mnist1d package: pip install "droplab[lab]"') \
            from None
    args = get_dataset_args()
    args.seed = draw_seed(seed)
    state = np.random.get_state()  # make_dataset seeds numpy's global generator: leave it as it was
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(state)
    arrays = {"x": raw["x"].astype(np.float32), "y": raw["y"].astype(np.int64),
              "x_test": raw["x_test"].astype(np.float32), "y_test": raw["y_test"].astype(np.int64)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return arrays


def _classification(parts, n_classes: int, name: str, sequence: bool) -> Splits:
    train, val, test = (Split(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                              torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))) for x, y in parts)
    return Splits(train, val, test, int(train.x.shape[1]), n_classes, name=name, sequence=sequence,
                  info={"n_train": len(train), "n_val": len(val), "n_test": len(test)})


def mnist1d(seed: int, *, validation: int = 800, full_train: bool = False) -> Splits:
    """The MNIST-1D draw of ``seed`` as splits: 3200 train / 800 validation / 1000 test.

    Args:
        seed: the study seed (the draw and the train/validation split).
        validation: examples of the draw's training part held out for validation. Default: 800.
        full_train: train on all 4000 training signals and use the test split as the validation split
            (the MNIST-1D paper's protocol, for the baseline check: no model selection happens on it).
            Default: False.
    """
    arrays = mnist1d_arrays(seed)
    x, y = arrays["x"], arrays["y"]
    test = (arrays["x_test"], arrays["y_test"])
    if full_train:
        return _classification([(x, y), test, test], 10, "mnist1d", True)
    perm = np.random.default_rng(seed).permutation(len(y))
    val, train = perm[:validation], perm[validation:]
    return _classification([(x[train], y[train]), (x[val], y[val]), test], 10, "mnist1d", True)


def _standardize(x: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = x[train].mean(0), x[train].std(0)
    std[std < 1e-8] = 1.0  # constant features (digits' blank corners) stay zero
    return mean, std


def digits(seed: int) -> Splits:
    """scikit-learn's digits: 60/20/20 split by ``seed``, features standardized with training statistics."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.data.astype(np.float64), bunch.target
    perm = np.random.default_rng(seed).permutation(len(y))
    n = len(y) // 5
    test, val, train = perm[:n], perm[n:2 * n], perm[2 * n:]
    mean, std = _standardize(x, train)
    return _classification([((x[i] - mean) / std, y[i]) for i in (train, val, test)], 10, "digits", False)


def diabetes(seed: int) -> Splits:
    """scikit-learn's diabetes (442 x 10): 60/20/20 by ``seed``; features and target standardized.

    The lab trains on the standardized target and reports RMSE in the target's units (``target_std``).
    """
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.float64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n = len(y) // 5
    test, val, train = perm[:n], perm[n:2 * n], perm[2 * n:]
    mean, std = _standardize(x, train)
    y_mean, y_std = float(y[train].mean()), float(y[train].std())
    parts = [Split(torch.from_numpy(((x[i] - mean) / std).astype(np.float32)),
                   torch.from_numpy(((y[i] - y_mean) / y_std).astype(np.float32)).reshape(-1, 1))
             for i in (train, val, test)]
    return Splits(*parts, n_features=x.shape[1], n_classes=1, name="diabetes", task="regression",
                  info={"n_train": len(train), "n_val": len(val), "n_test": len(test)},
                  target_mean=torch.tensor([y_mean], dtype=torch.float32),
                  target_std=torch.tensor([y_std], dtype=torch.float32))


def subsample(splits: Splits, n: int, seed: int) -> Splits:
    """``splits`` with only ``n`` training examples (the first ``n`` of a permutation seeded by ``seed``).

    Validation and test stay whole, so every training-set size is judged on the same examples.
    """
    if not 1 <= n <= len(splits.train):
        raise ValueError(f"n must be between 1 and {len(splits.train)}, but got {n}")
    index = torch.from_numpy(np.random.default_rng(seed + 7).permutation(len(splits.train))[:n])
    train = Split(splits.train.x[index], splits.train.y[index])
    return Splits(train, splits.val, splits.test, splits.n_features, splits.n_classes, name=splits.name,
                  sequence=splits.sequence, info={**splits.info, "n_train": n}, task=splits.task,
                  target_mean=splits.target_mean, target_std=splits.target_std)
