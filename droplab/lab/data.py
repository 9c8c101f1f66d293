"""Datasets for the lab: MNIST-1D (default, generated offline and cached), scikit-learn digits, user files.

Every dataset becomes float32 features and int64 labels split into train / validation / test by a
permutation seeded by the config's seed (MNIST-1D keeps its own 4000/1000 train/test split and takes
validation from the training part). Features are standardized with the training split's statistics.

User data: a ``.npz`` with a features array (``x``, ``X``, ``features`` or ``data``) and the label array
named by ``label_column``; or a ``.csv`` with a header row, numeric feature columns and a label column.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["Split", "Splits", "load_dataset", "cache_dir", "mnist1d_arrays", "augment_batch"]


@dataclass
class Split:
    """One split: ``x`` is ``(N, F)`` float32 (or ``(N, C, L)``), ``y`` is ``(N,)`` int64."""

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
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path} is not a readable .npz file: {error}") from None
    with data:
        keys = list(data.files)
        if label_column not in keys:
            raise ValueError(f"label_column {label_column!r} is not an array in {path}; arrays present: {keys}")
        feature_key = next((k for k in _NPZ_FEATURE_KEYS if k in keys and k != label_column), None)
        if feature_key is None:
            raise ValueError(f"{path} has no features array (expected one of {list(_NPZ_FEATURE_KEYS)}); "
                             f"arrays present: {keys}")
        return data[feature_key], data[label_column]


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


def _encode_labels(y: np.ndarray, source: str) -> tuple[np.ndarray, int]:
    if y.dtype.kind == "f":
        if np.isnan(y).any():
            raise ValueError(f"{source}: the labels contain NaN")
        if not np.all(y == np.round(y)):
            raise ValueError(f"{source}: labels must be class ids (integers or strings), but got fractional values")
    classes, encoded = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"{source}: need at least 2 classes, but the labels have {len(classes)}")
    return encoded.astype(np.int64), len(classes)


def _check_arrays(x: np.ndarray, y: np.ndarray, source: str) -> np.ndarray:
    if x.ndim == 1 or x.ndim > 3:
        raise ValueError(f"{source}: features must be (N, F) or (N, C, L), but got shape {x.shape}")
    if y.ndim != 1:
        raise ValueError(f"{source}: labels must be one-dimensional, but got shape {y.shape}")
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


def load_dataset(config) -> Splits:
    """Load ``config.dataset`` and split it by ``config.seed`` (see the module docstring)."""
    name = config.dataset
    seed = int(config.seed)
    sequence = False
    if name == "mnist1d":
        arrays = mnist1d_arrays()
        x_all, y_all = arrays["x"].astype(np.float64), arrays["y"].astype(np.int64)
        x_test, y_test = arrays["x_test"].astype(np.float64), arrays["y_test"].astype(np.int64)
        n_classes, sequence = 10, True
        perm = _permutation(len(x_all), seed)
        n_val = max(1, int(round(config.val_fraction * len(x_all))))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        x_tr, y_tr, x_va, y_va = x_all[train_idx], y_all[train_idx], x_all[val_idx], y_all[val_idx]
    else:
        if name == "digits":
            x, y = _digits()
            source = "digits"
        else:
            path = Path(name).expanduser()
            source = str(path)
            if path.suffix.lower() not in (".npz", ".csv"):
                raise ValueError(f"dataset must be 'mnist1d', 'digits' or a path to a .npz or .csv file, "
                                 f"but got {name!r}")
            if not path.is_file():
                raise FileNotFoundError(f"dataset file not found: {path}")
            x, y = _load_npz(path, config.label_column) if path.suffix.lower() == ".npz" else \
                _load_csv(path, config.label_column)
        x = _check_arrays(np.asarray(x), np.asarray(y), source)
        y, n_classes = _encode_labels(np.asarray(y), source)
        perm = _permutation(len(x), seed)
        n_test = max(1, int(round(config.test_fraction * len(x))))
        n_val = max(1, int(round(config.val_fraction * len(x))))
        if n_test + n_val >= len(x):
            raise ValueError(f"{source}: {len(x)} examples are too few for a train/validation/test split")
        test_idx, val_idx, train_idx = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
        x_tr, y_tr, x_va, y_va = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
        x_test, y_test = x[test_idx], y[test_idx]
    # standardize with training statistics only, so validation and test stay unseen
    mean = x_tr.mean(axis=0, keepdims=True)
    std = x_tr.std(axis=0, keepdims=True)
    std[std < 1e-8] = 1.0

    def split(a: np.ndarray, b: np.ndarray) -> Split:
        return Split(torch.from_numpy(((a - mean) / std).astype(np.float32)), torch.from_numpy(b.astype(np.int64)))

    train, val, test = split(x_tr, y_tr), split(x_va, y_va), split(x_test, y_test)
    n_features = int(np.prod(train.x.shape[1:]))
    return Splits(train, val, test, n_features, int(n_classes), name=name, sequence=sequence,
                  info={"n_train": len(train), "n_val": len(val), "n_test": len(test)})


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
