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

__all__ = ["check_before_training", "check_datasets", "dataset_key", "check_store", "check_output_dir"]


def check_before_training(configs: Iterable, *, db: str | None = None, save: str | None = None,
                          report_dir: str | None = None) -> dict[tuple, object]:
    """Every check a training command can make before its first epoch; returns the loaded splits.

    Args:
        configs: the runs' configs (their datasets are loaded and checked).
        db: the run store path (``--db``), if the command writes one. Default: None.
        save: the checkpoint directory (``--save``), if any. Default: None.
        report_dir: the report directory (``--report-dir``), if a report will be written. Default: None.

    Raises:
        UserError: naming the first problem found and its fix.
    """
    configs = list(configs)
    splits = check_datasets(configs)
    check_models(configs, splits)
    if db is not None:
        check_store(db)
    check_output_dir(save, "--save")
    check_output_dir(report_dir, "--report-dir")
    return splits


def check_models(configs: list, splits: dict[tuple, object]) -> None:
    """Build each distinct model once and run it on two training examples, in eval mode.

    So a factory that raises, or a model whose input or output does not fit the data, stops the command
    (and ``--dry-run``) with one error before anything is stored. The runs of one comparison differ only
    in rates, which change no shape, so one build per model and dataset suffices.

    Raises:
        UserError: the model's output does not have one row per example.
        UserCodeError: the factory or the forward raised (only the user's frames are shown).
    """
    import torch

    from .build import build_model
    from .errors import UserCodeError, raised_by_the_model
    from .tasks import task_of

    checked = set()
    for config in configs:
        key = (config.model, dataset_key(config))
        if key in checked:
            continue
        checked.add(key)
        loaded = splits[dataset_key(config)]
        model = build_model(config, loaded.input_shape,
                            task_of(loaded.task).output_size(loaded.n_outputs, config.nll_head)).eval()
        x = loaded.train.x[:2]
        try:
            with torch.no_grad():
                out = model(x)
        except Exception as error:
            if not raised_by_the_model(error):
                raise  # a droplab bug: keep its traceback
            raise UserCodeError(f"the forward of {config.model} on {config.dataset}'s inputs of shape "
                                f"{tuple(x.shape)}", error, hint="the model must take (batch, *input_shape)") from None
        if not isinstance(out, torch.Tensor) or out.shape[:1] != x.shape[:1]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UserError(f"model {config.model} returned {got} for a batch of {len(x)} examples; it must return "
                            "a tensor with one row per example")


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
        n_train = len(loaded.train)
        if config.batchnorm != "none" and (n_train % config.batch_size == 1 or n_train == 1):
            raise UserError(f"with batchnorm, the last training batch would hold 1 example ({n_train} training "
                            f"examples, batch_size={config.batch_size}), which BatchNorm cannot train on; change "
                            "batch_size")
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


def check_store(db: str) -> None:
    """The run store at ``db`` can be used: an existing file is a run store, a new one can be created there.

    Raises:
        UserError: ``db`` is a directory, not a SQLite run store, or in a place that cannot be written.
    """
    from .files import check_writable_file
    from .store import RunStore

    if db == ":memory:":
        return
    path = Path(db).expanduser()
    if path.is_dir():
        raise UserError(f"run store {db} is a directory; give a file path such as {path / 'droplab.db'}")
    if path.exists():
        RunStore(db, read_only=True).close()  # reads the header and schema: not SQLite -> UserError
    check_writable_file(path, "run store")


def check_output_dir(directory: str | None, option: str) -> None:
    """``directory`` (``--save``, ``--report-dir``) is, or can be made, a writable directory."""
    import os
    import tempfile

    if directory is None:
        return
    path = Path(directory).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {directory} is a file, not a directory")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {directory}: {existing} is a file, not a directory")
    try:  # a real probe: permission bits say nothing to root or about read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".droplab-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"{option} {directory} is not writable: {error.strerror or error} "
                        "(choose another directory)") from None
