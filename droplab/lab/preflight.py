"""Everything a command can check before the first epoch, so ``--dry-run`` catches it and no run starts doomed.

Config values are checked when the config is built (:class:`~droplab.lab.config.ExperimentConfig`); what
needs the data or the model is checked here: every dataset loads (its problem raised as a
:class:`~droplab.lab.errors.UserError` naming the file), the split leaves training data, ``augment``
fits the data, and every model builds, fits the data and takes a training step. What the checks load
and build (:class:`Prepared`) is handed to the runs, which reuse it instead of doing it again.

Example::

    >>> from droplab.lab.config import ExperimentConfig
    >>> try:
    ...     check_datasets([ExperimentConfig(dataset="missing.csv")])
    ... except UserError as error:
    ...     print(error)
    dataset file not found: missing.csv
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MissingFileError, UserError

__all__ = ["check_before_training", "check_datasets", "check_models", "dataset_key", "build_key", "check_store",
           "check_output_dir", "Prepared", "BuiltModel"]


@dataclass
class BuiltModel:
    """A model as built for a config, before its rates, kept for the runs that train it.

    Attributes:
        model: the model as built (rates as the factory left them), never trained; None when it could
            not be copied (each run then builds its own).
        rng_state: torch's generator state right after the build (a fresh build would leave it so).
        sites: ``(name, kind, p)`` of each dropout site as built, in :func:`droplab.sites` order.
    """

    model: object
    rng_state: object
    sites: list[tuple[str, str, float]]


@dataclass
class Prepared:
    """What the checks before training loaded and built, for the runs to reuse instead of doing it again."""

    splits: dict = field(default_factory=dict)  #: by :func:`dataset_key`
    models: dict = field(default_factory=dict)  #: by :func:`build_key`

    def splits_for(self, config):
        return self.splits[dataset_key(config)]

    def built_for(self, config) -> BuiltModel:
        return self.models[build_key(config)]

    def rates_for(self, config) -> list[float]:
        """The rate of each site ``config`` asks for (its ``rates``, or as built)."""
        from .build import site_rates

        built = self.built_for(config)
        if config.rates is None:
            return [p for _, _, p in built.sites]
        return site_rates(len(built.sites), config)

    def resolve(self, config):
        """``config`` with ``rates`` resolved to one rate per site: what the run will train."""
        return config.replace(rates=self.rates_for(config))

    def model_for(self, config):
        """A copy of the model as built for ``config`` (None when none was kept); torch's generator is set as
        a fresh build would leave it, so the run is the one :func:`droplab.lab.trainer.train` would build."""
        import copy

        import torch

        built = self.built_for(config)
        if built.model is None:
            return None
        torch.set_rng_state(built.rng_state)
        return copy.deepcopy(built.model)


def check_before_training(configs: Iterable, *, db: str | None = None, save: str | None = None,
                          report_dir: str | None = None, command: str | None = None) -> Prepared:
    """Every check a training command can make before its first epoch; returns what it loaded and built.

    Args:
        configs: the runs' configs (their datasets are loaded and their models built and tried).
        db: the run store path (``--db``), if the command writes one. Default: None.
        save: the checkpoint directory (``--save``), if any. Default: None.
        report_dir: the report directory (``--report-dir``), if a report will be written. Default: None.
        command: the command that varies dropout rates (``"compare"``): a model without a dropout site
            is then an error. Default: None.

    Raises:
        UserError: naming the first problem found and its fix.
    """
    configs = list(configs)
    splits = check_datasets(configs)
    prepared = Prepared(splits, check_models(configs, splits))
    for config in configs:
        if command is not None and not prepared.built_for(config).sites:
            raise UserError(f"model {config.model} has no dropout site, so {command} has nothing to vary (droplab "
                            "inspect lists a model's sites; input_site=true adds one on its input)")
        prepared.rates_for(config)  # per-site rates for another number of sites: an error now, not at training
    if db is not None:
        check_store(db)
    check_output_dir(save, "--save")
    check_output_dir(report_dir, "--report-dir")
    return prepared


def build_key(config) -> str:
    """The config fields that decide the model as built (runs sharing it differ in rates and training only)."""
    from .build import model_arguments

    fields = {key: getattr(config, key) for key in sorted(model_arguments(config))}
    return json.dumps([config.model, config.input_site, config.nll_head, config.task, dataset_key(config), fields],
                      sort_keys=True, default=str)


def check_models(configs: list, splits: dict[tuple, object]) -> dict[str, BuiltModel]:
    """Build each distinct model once and try it on two training examples: a forward in eval mode, then a
    training step (forward, loss, backward).

    So a factory that raises, a model whose input or output does not fit the data (a head narrower than
    the classes), or a model that raises only in training stops the command (and ``--dry-run``) with one
    error before anything is stored. A head wider than the classes is a warning. Returns the models as
    built (untouched copies), by :func:`build_key`, with torch's generator state after each build.

    Raises:
        UserError: the model's output does not fit the data.
        UserCodeError: the factory or the model raised (only the user's frames are shown).
    """
    import copy

    import torch

    from .. import sites
    from .build import build_model

    built: dict[str, BuiltModel] = {}
    for config in configs:
        key = build_key(config)
        if key in built:
            continue
        loaded = splits[dataset_key(config)]
        torch.manual_seed(config.seed)  # as the trainer does, so the run can take this very model
        model = build_model(config.replace(rates=None), loaded.input_shape, _outputs(config, loaded))
        rng_state = torch.get_rng_state()
        try:
            kept = copy.deepcopy(model)
        except Exception:  # a model that cannot be copied: each run builds its own
            kept = None
        _try_model(model, config, loaded)
        built[key] = BuiltModel(kept, rng_state, [(s.name, s.kind, float(s.p)) for s in sites(model)])
    return built


def _outputs(config, loaded) -> int:
    from .tasks import task_of

    return task_of(loaded.task).output_size(loaded.n_outputs, config.nll_head)


def _try_model(model, config, loaded) -> None:
    """One forward in eval mode (its output checked against the data), then one training step."""
    import torch

    from .tasks import task_of

    x, y = loaded.train.x[:2], loaded.train.y[:2]
    with _model_errors(config, x, "forward", "the model must take (batch, *input_shape)"):
        with torch.no_grad():
            out = model.eval()(x)
    _check_output(config, loaded, out, len(x))
    with _model_errors(config, x, "training step", "its eval-mode forward worked: dropout and gradients are on "
                                                   "in training"):
        task_of(loaded.task).loss(model.train()(x), y, config.nll_head).backward()
    model.zero_grad(set_to_none=True)


@contextmanager
def _model_errors(config, x, what: str, hint: str):
    """An exception out of the model is the user's (their frames shown); droplab's own keep their traceback."""
    from .errors import UserCodeError, raised_by_the_model

    try:
        yield
    except Exception as error:
        if not raised_by_the_model(error):
            raise
        raise UserCodeError(f"the {what} of {config.model} on {config.dataset}'s inputs of shape {tuple(x.shape)}",
                            error, hint=hint) from None


def _check_output(config, loaded, out, n: int) -> None:
    """One row per example; a classifier's head gives one logit per class (narrower: error, wider: warning)."""
    import torch

    expected = _outputs(config, loaded)
    if not isinstance(out, torch.Tensor) or out.shape[:1] != (n,):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model {config.model} returned {got} for a batch of {n} examples; it must return a tensor "
                        "with one row per example")
    if loaded.task == "regression":
        if tuple(out.shape[1:]) != (expected,):
            raise UserError(f"model {config.model} returned {tuple(out.shape)} for {n} examples, but the data has "
                            f"{loaded.n_outputs} regression target(s): its head must give ({n}, {expected})"
                            + (" (a mean and a log-variance per target: nll_head)" if config.nll_head else ""))
        return
    if out.dim() != 2 or out.shape[1] < expected:
        raise UserError(f"model {config.model}'s head gives {tuple(out.shape[1:])} per example, but the data has "
                        f"{expected} classes: it needs one logit per class, shape (N, {expected}) (a factory that "
                        "declares n_outputs gets the number)")
    if out.shape[1] > expected:
        warnings.warn(f"model {config.model}'s head gives {out.shape[1]} logits per example for {expected} classes: "
                      f"the last {out.shape[1] - expected} are never a target (a factory that declares n_outputs "
                      "gets the number)", UserWarning, stacklevel=2)


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
