"""Datasets for the lab: MNIST-1D (default, generated offline and cached), scikit-learn digits, user data.

Every dataset becomes float32 features and targets split into train / validation / test by a
permutation seeded by the config's seed (MNIST-1D keeps its own 4000/1000 train/test split and takes
validation from the training part). File features are standardized with the training split's statistics.

User data:

* a ``.npz`` with a features array (``x``, ``X``, ``features`` or ``data``) and the target array named
  by ``label_column``; or a ``.csv`` with a header row, numeric feature columns and a target column;
* a factory, ``FILE.py:FACTORY`` or ``package.module:FACTORY``, returning ``(train, val)`` or
  ``(train, val, test)`` map-style datasets (``len(ds)`` and ``ds[i] -> (x, y)``, e.g. a
  ``torch.utils.data.TensorDataset``); without a test split one is carved from train
  (``test_fraction``). Its features are used as given.

The task (``config.task``) is classification or regression; ``auto`` infers it: integer targets (or
strings) are classes, float targets that are not all integers are regression. Classification targets
become int64 class ids; regression targets float32 ``(N, k)``, standardized with the training split's
mean and standard deviation (``Splits.target_mean``/``target_std`` undo it, so metrics are reported in
the data's own units).
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["Split", "Splits", "load_dataset", "infer_task", "cache_dir", "mnist1d_arrays", "augment_batch"]


@dataclass
class Split:
    """One split: ``x`` is ``(N, *input_shape)`` float32; ``y`` is ``(N,)`` int64 class ids or ``(N, k)`` float32."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    n_features: int
    n_classes: int
    name: str = ""
    sequence: bool = False  #: features are an ordered 1-D signal (shift augmentation makes sense)
    info: dict = field(default_factory=dict)
    task: str = "classification"  #: "classification" or "regression"
    target_mean: torch.Tensor | None = None  #: regression: the training targets' mean (per target)
    target_std: torch.Tensor | None = None  #: regression: the training targets' standard deviation

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape."""
        return tuple(self.train.x.shape[1:])

    @property
    def n_outputs(self) -> int:
        """Classes (classification) or targets (regression)."""
        return self.n_classes


def cache_dir() -> Path:
    """``$DROPLAB_CACHE``, else ``~/.cache/droplab``."""
    return Path(os.environ.get("DROPLAB_CACHE") or Path.home() / ".cache" / "droplab")


def mnist1d_arrays() -> dict[str, np.ndarray]:
    """MNIST-1D with the package's default arguments (4000 train / 1000 test, length 40), cached as .npz."""
    path = cache_dir() / "mnist1d_default.npz"
    if path.is_file():
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ModuleNotFoundError:
        raise ModuleNotFoundError('the MNIST-1D dataset needs the mnist1d package: '
                                  'pip install "droplab[lab]"') from None
    raw = make_dataset(get_dataset_args())  # generated locally from templates; no download
    arrays = {"x": raw["x"], "y": raw["y"], "x_test": raw["x_test"], "y_test": raw["y_test"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)  # atomic: concurrent workers never read a half-written cache
    return arrays


def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise ModuleNotFoundError('the digits dataset needs scikit-learn: pip install "droplab[lab]"') from None
    digits = load_digits()
    return digits.data, digits.target


_NPZ_FEATURE_KEYS = ("x", "X", "features", "data", "inputs")


def _load_npz(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    import zipfile
    import zlib

    # a truncated or damaged zip fails on open or only when an array is read: both are the file's fault
    unreadable = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        data = np.load(path, allow_pickle=False)
    except unreadable as error:
        raise ValueError(f"{path} is not a readable .npz file: {error}") from None
    with data:
        keys = list(data.files)
        if label_column not in keys:
            raise ValueError(f"label_column {label_column!r} is not an array in {path}; arrays present: {keys}")
        feature_key = next((k for k in _NPZ_FEATURE_KEYS if k in keys and k != label_column), None)
        if feature_key is None:
            raise ValueError(f"{path} has no features array (expected one of {list(_NPZ_FEATURE_KEYS)}); "
                             f"arrays present: {keys}")
        try:
            return data[feature_key], data[label_column]
        except unreadable as error:
            raise ValueError(f"{path} is not a readable .npz file: {error}") from None


def _load_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path} is empty") from None
        header = [h.strip() for h in header]
        if label_column not in header:
            raise ValueError(f"label_column {label_column!r} is not a column of {path}; columns: {header}")
        label_index = header.index(label_column)
        features, labels = [], []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path} line {line_no} has {len(row)} fields but the header has {len(header)}")
            labels.append(row[label_index].strip())
            values = []
            for i, cell in enumerate(row):
                if i == label_index:
                    continue
                cell = cell.strip()
                try:
                    values.append(float(cell) if cell else float("nan"))
                except ValueError:
                    raise ValueError(f"{path} line {line_no}, column {header[i]!r}: {cell!r} is not a number") from None
            features.append(values)
    if not labels:
        raise ValueError(f"{path} has a header but no data rows")
    return np.asarray(features, dtype=np.float64), np.asarray(labels)


def _numeric(y: np.ndarray) -> np.ndarray | None:
    """``y`` as float64, or None when it holds non-numbers (string class names)."""
    if y.dtype.kind in "fiub":
        return y.astype(np.float64)
    try:
        return np.asarray(y, dtype=np.float64)
    except (ValueError, TypeError):
        return None


def infer_task(y: np.ndarray, task: str = "auto") -> str:
    """``task`` unless ``"auto"``: float targets that are not all integers mean regression, else classification.

    Example::

        >>> infer_task(np.array([0, 1, 1])), infer_task(np.array([0.5, 1.25])), infer_task(np.array(["a", "b"]))
        ('classification', 'regression', 'classification')
    """
    if task != "auto":
        return task
    numeric = _numeric(np.asarray(y))
    if numeric is None:
        return "classification"
    finite = numeric[np.isfinite(numeric)]
    return "regression" if not np.all(finite == np.round(finite)) else "classification"


def _encode_labels(y: np.ndarray, source: str) -> tuple[np.ndarray, int]:
    if y.ndim != 1:
        raise ValueError(f"{source}: class labels must be one-dimensional, but got shape {y.shape}")
    numeric = _numeric(y) if y.dtype.kind in "US" else None  # a .csv's labels are text, numbers too
    if numeric is not None and np.isfinite(numeric).all() and not np.all(numeric == np.round(numeric)):
        raise ValueError(f"{source}: labels must be class ids (integers or strings), but got fractional values "
                         "such as " + ", ".join(str(v) for v in y[numeric != np.round(numeric)][:3])
                         + " (for regression set task=regression)")
    if y.dtype.kind == "f":
        if np.isnan(y).any():
            raise ValueError(f"{source}: the labels contain NaN")
        if not np.all(y == np.round(y)):
            raise ValueError(f"{source}: labels must be class ids (integers or strings), but got fractional values "
                             "(for regression set task=regression)")
    classes, encoded = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"{source}: need at least 2 classes, but the labels have {len(classes)}")
    return encoded.astype(np.int64), len(classes)


def _regression_targets(y: np.ndarray, source: str) -> np.ndarray:
    numeric = _numeric(np.asarray(y))
    if numeric is None:
        raise ValueError(f"{source}: regression targets must be numbers, but got dtype {np.asarray(y).dtype}")
    if not np.isfinite(numeric).all():
        raise ValueError(f"{source}: the regression targets contain NaN or infinite values")
    if numeric.ndim > 2:
        raise ValueError(f"{source}: regression targets must be (N,) or (N, k), but got shape {numeric.shape}")
    return numeric.reshape(len(numeric), -1)


def _check_arrays(x: np.ndarray, y: np.ndarray, source: str) -> np.ndarray:
    if x.ndim == 1 or x.ndim > 3:
        raise ValueError(f"{source}: features must be (N, F) or (N, C, L), but got shape {x.shape}")
    if y.ndim not in (1, 2):
        raise ValueError(f"{source}: targets must be (N,) or (N, k), but got shape {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{source}: mismatched shapes: {len(x)} feature rows but {len(y)} labels")
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{source}: features must be numeric, but got dtype {x.dtype}")
    x = x.astype(np.float64)
    if np.isnan(x).any():
        rows = np.unique(np.nonzero(np.isnan(x.reshape(len(x), -1)))[0])[:5].tolist()
        raise ValueError(f"{source}: the features contain NaN (first rows: {rows}); impute or drop them first")
    if not np.isfinite(x).all():
        raise ValueError(f"{source}: the features contain infinite values")
    return x


def _permutation(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def _file_arrays(config) -> tuple[np.ndarray, np.ndarray, str]:
    """Features and raw targets of digits or a .npz/.csv file."""
    name = config.dataset
    if name == "digits":
        return *_digits(), "digits"
    path = Path(name).expanduser()
    if path.suffix.lower() not in (".npz", ".csv"):
        raise ValueError(f"dataset must be 'mnist1d', 'digits', a path to a .npz or .csv file, or a factory "
                         f"FILE.py:FACTORY, but got {name!r}")
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    x, y = _load_npz(path, config.label_column) if path.suffix.lower() == ".npz" else \
        _load_csv(path, config.label_column)
    return x, y, str(path)


def _split_indices(n: int, config, source: str, with_test: bool = True) -> tuple[np.ndarray, ...]:
    """``(test, val, train)`` (or ``(val, train)``) index arrays from a permutation seeded by the config."""
    perm = _permutation(n, int(config.seed))
    n_test = max(1, int(round(config.test_fraction * n))) if with_test else 0
    n_val = max(1, int(round(config.val_fraction * n)))
    if n_test + n_val >= n:
        raise ValueError(f"{source}: {n} examples are too few for a train/validation/test split")
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return (test, val, train) if with_test else (val, train)


def _targets(y_parts: list[np.ndarray], config, source: str) -> tuple[list[np.ndarray], str, int, dict]:
    """Encode the targets of every split together: class ids, or standardized regression targets."""
    task = infer_task(np.concatenate([np.asarray(y).reshape(len(y), -1)[:, 0] if np.asarray(y).ndim > 1
                                      else np.asarray(y) for y in y_parts]), config.task)
    sizes = np.cumsum([len(y) for y in y_parts])[:-1]
    if task == "classification":
        encoded, n_classes = _encode_labels(np.concatenate(y_parts), source)
        if config.task == "auto" and n_classes > max(20, len(encoded) // 10):
            warnings.warn(f"{source}: the targets are integers with {n_classes} distinct values, so the task was "
                          "inferred as classification; if they are quantities, set task=regression (--task regression)",
                          UserWarning, stacklevel=2)
        elif n_classes > len(encoded) // 2:
            warnings.warn(f"{source}: {n_classes} classes for {len(encoded)} examples, most classes one or two "
                          "examples: is the label column a quantity? (task=regression)", UserWarning, stacklevel=2)
        return np.split(encoded, sizes), task, n_classes, {}
    values = [_regression_targets(y, source) for y in y_parts]
    mean, std = values[-1].mean(axis=0), values[-1].std(axis=0)  # the last part is the training split
    std[std < 1e-12] = 1.0
    scaled = [((v - mean) / std).astype(np.float32) for v in values]
    return scaled, task, values[0].shape[1], {"target_mean": torch.from_numpy(mean.astype(np.float32)),
                                              "target_std": torch.from_numpy(std.astype(np.float32))}


def _finish(parts: list[tuple[np.ndarray, np.ndarray]], config, source: str, *, standardize: bool,
            sequence: bool) -> Splits:
    """Standardize with the training split (the last part) and build :class:`Splits` from test, val, train."""
    ys, task, n_outputs, scale = _targets([y for _, y in parts], config, source)
    xs = [x for x, _ in parts]
    if standardize:  # training statistics only, so validation and test stay unseen
        mean, std = xs[-1].mean(axis=0, keepdims=True), xs[-1].std(axis=0, keepdims=True)
        std[std < 1e-8] = 1.0
        xs = [(x - mean) / std for x in xs]

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        target = torch.from_numpy(np.ascontiguousarray(y))
        return Split(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                     target.long() if task == "classification" else target.float())

    test, val, train = (split(x, y) for x, y in zip(xs, ys))
    n_features = int(np.prod(train.x.shape[1:]))
    return Splits(train, val, test, n_features, int(n_outputs), name=str(config.dataset), sequence=sequence,
                  info={"n_train": len(train), "n_val": len(val), "n_test": len(test), "task": task},
                  task=task, **scale)


def _materialize(dataset, source: str) -> tuple[np.ndarray, np.ndarray]:
    """A map-style dataset of ``(x, y)`` pairs as two arrays."""
    try:
        n = len(dataset)
    except TypeError:
        raise ValueError(f"{source}: datasets must be map-style (len(ds) and ds[i] -> (x, y)), but got "
                         f"{type(dataset).__name__}") from None
    if n == 0:
        raise ValueError(f"{source}: a split is empty")
    xs, ys = [], []
    for i in range(n):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"{source}: ds[{i}] must be an (x, y) pair, but got {type(item).__name__}")
        xs.append(np.asarray(item[0].detach().cpu() if isinstance(item[0], torch.Tensor) else item[0]))
        ys.append(np.asarray(item[1].detach().cpu() if isinstance(item[1], torch.Tensor) else item[1]))
    try:
        return np.stack(xs), np.stack(ys)
    except ValueError as error:
        raise ValueError(f"{source}: examples differ in shape ({error})") from None


def _check_same_shapes(arrays: list[tuple[np.ndarray, np.ndarray]], source: str) -> None:
    """Every split's examples and targets have one shape (a model fits one input shape)."""
    parts = ("train", "val", "test")
    x_shapes = {part: x.shape[1:] for part, (x, _) in zip(parts, arrays)}
    y_shapes = {part: y.shape[1:] for part, (_, y) in zip(parts, arrays)}
    for what, shapes in (("features", x_shapes), ("targets", y_shapes)):
        if len(set(shapes.values())) > 1:
            listed = ", ".join(f"{part} {shape}" for part, shape in shapes.items())
            raise ValueError(f"dataset {source}: the splits' {what} differ in shape ({listed}); every split needs "
                             f"the same {what} per example")


def _factory_splits(config) -> Splits:
    from .factories import call_factory, resolve

    factory = resolve(config.dataset, "dataset")
    available = {f: getattr(config, f) for f in config.to_dict()}
    returned = call_factory(factory, config.dataset, available)
    if not isinstance(returned, (tuple, list)) or len(returned) not in (2, 3):
        raise ValueError(f"dataset factory {config.dataset!r} must return (train, val) or (train, val, test) "
                         f"datasets, but got {type(returned).__name__}")
    arrays = [_materialize(ds, f"dataset {config.dataset} [{part}]")
              for ds, part in zip(returned, ("train", "val", "test"))]
    for x, y in arrays:
        _check_arrays(x if x.ndim > 1 else x[:, None], y, config.dataset)
    _check_same_shapes(arrays, config.dataset)
    if len(arrays) == 2:  # carve a test split from train
        x, y = arrays[0]
        perm = _permutation(len(x), int(config.seed))
        n_test = max(1, int(round(config.test_fraction * len(x))))
        if n_test >= len(x):
            raise ValueError(f"dataset {config.dataset}: {len(x)} training examples are too few to carve a test split")
        arrays = [(x[perm[n_test:]], y[perm[n_test:]]), arrays[1], (x[perm[:n_test]], y[perm[:n_test]])]
    train, val, test = arrays
    return _finish([test, val, train], config, config.dataset, standardize=False, sequence=False)


def load_dataset(config) -> Splits:
    """Load ``config.dataset`` and split it by ``config.seed`` (see the module docstring)."""
    from .factories import is_factory_spec

    if is_factory_spec(config.dataset):
        return _factory_splits(config)
    if config.dataset == "mnist1d":
        arrays = mnist1d_arrays()
        x_all, y_all = arrays["x"].astype(np.float64), arrays["y"].astype(np.int64)
        val_idx, train_idx = _split_indices(len(x_all), config, "mnist1d", with_test=False)
        parts = [(arrays["x_test"].astype(np.float64), arrays["y_test"].astype(np.int64)),
                 (x_all[val_idx], y_all[val_idx]), (x_all[train_idx], y_all[train_idx])]
        return _finish(parts, config, "mnist1d", standardize=True, sequence=True)
    x, y, source = _file_arrays(config)
    x = _check_arrays(np.asarray(x), np.asarray(y), source)
    y = np.asarray(y)
    test_idx, val_idx, train_idx = _split_indices(len(x), config, source)
    parts = [(x[test_idx], y[test_idx]), (x[val_idx], y[val_idx]), (x[train_idx], y[train_idx])]
    return _finish(parts, config, source, standardize=True, sequence=False)


def augment_batch(x: torch.Tensor, generator: torch.Generator, max_shift: int = 3,
                  noise: float = 0.05) -> torch.Tensor:
    """MNIST-1D augmentation: a random circular shift of up to ``max_shift`` steps per example plus Gaussian noise.

    Draws from ``generator`` (seeded per epoch by the trainer) so a resumed run augments identically.
    """
    n, length = x.shape[0], x.shape[-1]
    shifts = torch.randint(-max_shift, max_shift + 1, (n,), generator=generator)
    index = (torch.arange(length).unsqueeze(0) - shifts.unsqueeze(1)) % length
    shifted = torch.gather(x.reshape(n, -1, length), 2, index.unsqueeze(1).expand(n, x.reshape(n, -1, length).shape[1],
                                                                                  length))
    return shifted.reshape(x.shape) + noise * torch.randn(x.shape, generator=generator)
