"""Everything a command can check before the first epoch, so ``--dry-run`` catches it and no run starts doomed.

Config values are checked when the config is built (:class:`~droplab.lab.config.ExperimentConfig`); what
needs the data is checked here: every dataset file loads (its problem raised as a
:class:`~droplab.lab.errors.UserError` naming the file), the split leaves training data, and ``augment``
fits the data.

Example::

    >>> from droplab.lab.config import ExperimentConfig
    >>> try:
    ...     check_datasets([ExperimentConfig(dataset="missing.csv")])
    ... except UserError as error:
    ...     print(error)
    dataset file not found: missing.csv
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .errors import MissingFileError, UserError

__all__ = ["check_datasets", "dataset_key"]


def dataset_key(config) -> tuple:
    """The config fields that decide a run's data split (runs sharing it see the same split)."""
    return (config.dataset, config.label_column, config.val_fraction, config.test_fraction, config.seed)


def check_datasets(configs: Iterable) -> dict[tuple, object]:
    """Load each distinct dataset of ``configs`` and check it suits its runs; returns the splits by :func:`dataset_key`.

    Raises:
        UserError: a dataset file is missing or malformed, leaves no training data, or ``augment=true``
            is set for data that is not a 1-D sequence.
    """
    from .data import load_dataset

    splits: dict[tuple, object] = {}
    for config in configs:
        key = dataset_key(config)
        if key not in splits:
            splits[key] = _load(config, load_dataset)
        loaded = splits[key]
        if loaded.n_features == 0:
            raise UserError(f"dataset {config.dataset} has no feature columns (only the label "
                            f"{config.label_column!r}); add features")
        if len(loaded.train) == 0:
            raise UserError(f"dataset {config.dataset}: val_fraction={config.val_fraction} leaves no training "
                            "examples; lower it")
        if config.augment and not loaded.sequence:
            raise UserError(f"augment=true shifts and perturbs MNIST-1D-like sequences; dataset {config.dataset!r} "
                            "is not one (set augment=false)")
    return splits


def _load(config, load_dataset):
    """``load_dataset(config)``, its problems raised as one UserError that names the file once."""
    import csv
    import zipfile
    import zlib

    if Path(config.dataset).expanduser().is_dir():
        raise UserError(f"dataset {config.dataset} is a directory; give a .csv or .npz file")
    try:
        return load_dataset(config)
    except UserError:
        raise
    except (ValueError, TypeError, OSError, EOFError, csv.Error, zipfile.BadZipFile, zlib.error) as error:
        message = str(error) if not isinstance(error, OSError) or not error.strerror else error.strerror
        if str(config.dataset) not in message:
            message = f"dataset {config.dataset}: {message}"
        kind = MissingFileError if isinstance(error, FileNotFoundError) else UserError
        raise kind(message) from error
