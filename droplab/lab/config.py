"""The typed configuration of one lab experiment: every knob has a default and a one-line reason.

A config comes from defaults, a dict (``from_dict``), a TOML file (``from_toml``) and ``key=value``
overrides (``with_overrides``); unknown keys are an error, so a typo never silently runs the default.
The resolved config (``to_dict``) is stored with every run.

One field sets dropout rates: ``rates``, every site's rate in :func:`droplab.sites` order (one value
sets every site; None keeps the rates the model was built with). A stored run's config holds the rates
that ran, one per site. The keys that set rates before (``dropout``, ``layer_rates``,
``input_dropout``, ``rate_scale``) still load, with a ``DeprecationWarning`` saying what they became
(:mod:`droplab.lab.legacy_rates`).

Example::

    >>> cfg = ExperimentConfig().with_overrides(["rates=[0.1,0.5]", "epochs=5"])
    >>> cfg.rates, cfg.epochs, cfg.label()
    ([0.1, 0.5], 5, 'p=0.1/0.5')
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..functional import check_probability
from .errors import MissingFileError, UserError

__all__ = ["ExperimentConfig", "MODELS", "ACTIVATIONS", "BATCHNORM", "OPTIMIZERS", "VARIANTS", "SCHEDULES",
           "parse_schedule", "rates_text"]

MODELS = ("mlp", "cnn1d", "gru", "transformer")
ACTIVATIONS = ("relu", "gelu", "tanh", "selu", "silu")
BATCHNORM = ("none", "before_dropout", "after_dropout")
OPTIMIZERS = ("adamw", "sgd")
VARIANTS = ("dropout", "channel", "dropblock", "locked", "gaussian", "alpha", "concrete")
SCHEDULES = ("ramp", "early", "late")
TASKS = ("auto", "classification", "regression")


def _help(default: Any, text: str, factory: bool = False) -> Any:
    if factory:
        return field(default_factory=default, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class ExperimentConfig:
    """One training run's configuration (the lab's single source of truth for its knobs)."""

    name: str = _help("", "a label for the run in tables and reports (escaped in HTML)")
    dataset: str = _help("mnist1d", "mnist1d (generated offline, cached), digits (sklearn 8x8), or a .npz/.csv path")
    label_column: str = _help("label", "the label column of a .csv file, or the label array's key in a .npz")
    val_fraction: float = _help(0.1, "share of the training data held out for validation and early stopping")
    test_fraction: float = _help(0.2, "share held out for test when the dataset has no test split of its own")
    model: str = _help("mlp", "mlp, cnn1d, gru, transformer, or a factory: FILE.py:NAME or package.module:NAME")
    width: int | None = _help(None, "hidden units (mlp), channels (cnn1d), hidden size (gru) or model dim "
                                    "(transformer); None: the model's own default, sized for this machine")
    depth: int = _help(2, "hidden layers / conv blocks / recurrent layers / transformer blocks")
    activation: str = _help("relu", "nonlinearity of the hidden layers")
    batchnorm: str = _help("none", "none, or BatchNorm placed before or after each hidden dropout site")
    rates: list[float] | None = _help(None, "every dropout site's rate, in droplab.sites order (the input site "
                                            "first); one value sets every site; None: the rates the model was "
                                            "built with (the built-in models: 0.5)")
    input_site: bool = _help(False, "wrap the model's input in a dropout site, the first site; built at 0.2 "
                                    "(the original paper's input rate), rates sets it")
    variant: str = _help("dropout", "which droplab dropout module fills the sites: " + ", ".join(VARIANTS))
    schedule: str | None = _help(None, "rate schedule over epochs: ramp:N (curriculum), early:N or late:N")
    task: str = _help("auto", "classification or regression; auto infers it from the targets")
    nll_head: bool = _help(False, "regression: the model also predicts a log-variance per target, trained "
                                  "with the Gaussian NLL (heteroscedastic)")
    epochs: int = _help(60, "training epochs (upper bound when early stopping is on)")
    batch_size: int = _help(100, "examples per optimizer step")
    optimizer: str = _help("adamw", "adamw, or sgd with momentum")
    lr: float = _help(2e-3, "learning rate")
    momentum: float = _help(0.9, "SGD momentum (ignored by adamw)")
    weight_decay: float = _help(0.0, "decoupled weight decay (adamw) or L2 penalty (sgd); 0 isolates dropout")
    max_norm: float | None = _help(None, "cap each unit's incoming weight norm (the paper pairs it with dropout)")
    early_stopping_patience: int | None = _help(None, "stop after this many epochs without a val-loss improvement")
    augment: bool = _help(False, "random shift and noise on MNIST-1D-like sequences during training")
    seed: int = _help(0, "seeds initialization, data order, split and every dropout mask")
    device: str = _help("cpu", "torch device to train on")
    threads: int | None = _help(1, "torch intra-op threads: small batches gain little from more, and busy-waiting "
                                   "thread pools thrash a shared machine (None keeps torch's default)")

    def __post_init__(self) -> None:
        for check in _CHECKS:
            check(self)

    def label(self) -> str:
        """A short human label: the name, or the rates (``p=0.5``, ``p=0.2/0.5/0.5``) and what else is set."""
        if self.name:
            return self.name
        label = "as built" if self.rates is None else rates_text(self.rates)
        if self.variant != "dropout":
            label += f", {self.variant}"
        if self.schedule:
            label += f", {self.schedule}"
        return label

    # (de)serialization ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        """Build from a mapping; unknown keys raise ``ValueError`` naming the key and the nearest known one."""
        if not isinstance(data, Mapping):
            raise UserError(f"config must be a mapping, but got {type(data).__name__}")
        from .legacy_rates import LEGACY_KEYS, upgrade

        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [key for key in data if key not in known and key not in LEGACY_KEYS]
        if unknown:
            raise UserError(f"unknown config key(s): {', '.join(_hint(key, known) for key in unknown)}; known keys: "
                            f"{', '.join(known)}")
        hints = typing.get_type_hints(cls)
        try:
            values = {key: _coerce(key, value, hints[key]) for key, value in upgrade(data).items()}
            return cls(**values)
        except UserError:
            raise
        except (ValueError, TypeError) as error:  # the checks' own wording, as the user's error
            raise UserError(str(error)) from None

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentConfig:
        """Read a TOML file of ``key = value`` lines (an optional ``[experiment]`` table is unwrapped)."""
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ModuleNotFoundError:
                raise ModuleNotFoundError("reading TOML configs on Python 3.10 needs tomli: pip install tomli") \
                    from None
        path = Path(path)
        if path.is_dir():
            raise UserError(f"config file {path} is a directory; give a .toml file")
        if not path.is_file():
            raise MissingFileError(f"config file not found: {path}")
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"config file {path} is not valid TOML: {error}") from None
        except OSError as error:
            raise UserError(f"cannot read config file {path}: {error.strerror or error}") from None
        if set(data) == {"experiment"} and isinstance(data["experiment"], dict):
            data = data["experiment"]
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> ExperimentConfig:
        return self.from_dict({**self.to_dict(), **changes})

    def with_overrides(self, overrides: Iterable[str]) -> ExperimentConfig:
        """Apply ``key=value`` strings; values parse as JSON (numbers, true/false, null, lists) or stay strings."""
        changes: dict[str, Any] = {}
        for item in overrides:
            if "=" not in item:
                raise UserError(f"override must look like key=value (e.g. --set rates=0.3), but got {item!r}")
            key, raw = item.split("=", 1)
            changes[key.strip()] = _parse_value(raw.strip())
        return self.from_dict({**self.to_dict(), **changes})

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def rates_text(rates: list[float]) -> str:
    """``p=0.5`` for one rate (or all equal), ``p=0.1/0.5`` for one per site."""
    values = list(rates)
    if values and all(r == values[0] for r in values):
        values = values[:1]
    return "p=" + "/".join(f"{r:g}" for r in values)


def _hint(key: object, known) -> str:
    """``'dropuot' (did you mean 'dropout'? ...)`` for an unknown key."""
    from .legacy_rates import LEGACY_KEYS

    close = difflib.get_close_matches(str(key), [*known, *LEGACY_KEYS], n=1)
    if not close:
        return repr(key)
    if close[0] in LEGACY_KEYS:
        return f"{key!r} (did you mean {close[0]!r}? it is deprecated: rates sets every site's rate)"
    return f"{key!r} (did you mean {close[0]!r}?)"


def parse_schedule(spec: str) -> tuple[str, int]:
    """``"ramp:10"`` -> ``("ramp", 10)``; raises ``ValueError`` naming the allowed forms."""
    kind, _, arg = str(spec).partition(":")
    try:
        epochs = int(arg)
    except ValueError:
        epochs = -1
    if kind not in SCHEDULES or epochs < 1:
        raise ValueError(f"schedule must be one of ramp:N (rate grows linearly from 0 over N epochs), "
                         f"early:N (dropout for the first N epochs only) or late:N (dropout from epoch N on), "
                         f"with N a positive integer, but got {spec!r}")
    return kind, epochs


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, but got {value!r}")


def _check_choices(config: ExperimentConfig) -> None:
    """Every field with a fixed set of values holds one of them; the name is one printable line."""
    if not isinstance(config.name, str) or any(unicodedata.category(c) == "Cc" for c in config.name):
        raise ValueError("name must be a string without control characters (it is shown on terminals and in "
                         f"reports), but got {config.name!r}")
    if ":" not in str(config.model):  # FILE.py:NAME or package.module:NAME is a user's model factory
        _check_choice("model", config.model, MODELS)
    for name, allowed in (("task", TASKS), ("activation", ACTIVATIONS), ("batchnorm", BATCHNORM),
                          ("optimizer", OPTIMIZERS), ("variant", VARIANTS)):
        _check_choice(name, getattr(config, name), allowed)
    if config.schedule is not None:
        parse_schedule(config.schedule)


def _check_counts(config: ExperimentConfig) -> None:
    """Sizes and counts are positive; the seed fits 64 bits."""
    for name in ("width", "depth", "epochs", "batch_size"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ValueError(f"{name} must be a positive integer, but got {getattr(config, name)}")
    if config.early_stopping_patience is not None and config.early_stopping_patience < 1:
        raise ValueError(f"early_stopping_patience must be a positive integer or None, "
                         f"but got {config.early_stopping_patience}")
    if not 0 <= config.seed < 2**64:
        raise ValueError(f"seed must be an integer in 0..2**64-1, but got {config.seed}")
    if config.threads is not None and config.threads < 1:
        raise ValueError(f"threads must be a positive integer or null (torch's default), but got {config.threads}")


def _check_rates(config: ExperimentConfig) -> None:
    for rate in config.rates or []:  # [] is a model without sites
        check_probability(rate)


def _check_split(config: ExperimentConfig) -> None:
    for name in ("val_fraction", "test_fraction"):
        value = getattr(config, name)
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be between 0 and 1 (exclusive), but got {value}")
    if config.val_fraction + config.test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must leave training data (sum below 1), but got "
                         f"{config.val_fraction} + {config.test_fraction}")


def _check_optimizer(config: ExperimentConfig) -> None:
    for name in ("lr", "momentum", "weight_decay", "max_norm"):
        value = getattr(config, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, but got {value}")
    if config.lr <= 0:
        raise ValueError(f"lr must be positive, but got {config.lr}")
    if config.weight_decay < 0 or not 0 <= config.momentum < 1:
        raise ValueError("weight_decay must be >= 0 and momentum in [0, 1), "
                         f"but got weight_decay={config.weight_decay}, momentum={config.momentum}")
    if config.max_norm is not None and config.max_norm <= 0:
        raise ValueError(f"max_norm must be positive or None, but got {config.max_norm}")


def _check_combinations(config: ExperimentConfig) -> None:
    """Knobs that are each valid but cannot work together (found at config time, so ``--dry-run`` sees them)."""
    builtin = ":" not in str(config.model)  # a user's model factory places its own sites
    if builtin and config.variant in ("channel", "dropblock") and config.model != "cnn1d":
        raise ValueError(f"variant {config.variant!r} drops channels or blocks of a (N, C, L) signal: use "
                         f"model='cnn1d' (got model={config.model!r})")
    if builtin and config.variant == "locked" and config.model not in ("gru", "transformer"):
        raise ValueError(f"variant 'locked' shares one mask over time steps: use model='gru' or 'transformer' "
                         f"(got model={config.model!r})")
    if builtin and config.variant == "concrete" and config.model != "mlp":
        raise ValueError("variant 'concrete' learns the rate of the layer it wraps: the lab supports it on "
                         f"model='mlp' (got model={config.model!r})")
    if config.batchnorm != "none" and config.batch_size == 1:
        raise ValueError("batchnorm needs batches of at least 2 examples in training: raise batch_size or set "
                         "batchnorm=none")
    if str(config.device).split(":")[0] == "meta":
        raise ValueError("device 'meta' holds no data and cannot train: use device=cpu or cuda")


def _check_device(device: str) -> None:
    """A device torch understands and this machine has (checked at config time, so ``--dry-run`` sees it)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device must be a torch device such as cpu, cuda or cuda:1, but got {device!r}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r} is not available: torch sees no CUDA device here (use device=cpu)")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"device {device!r} is not available: torch sees {count} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} is not available here (use device=cpu)")


def _check_device_field(config: ExperimentConfig) -> None:
    _check_device(config.device)


# the checks ExperimentConfig.__post_init__ runs, in order (the first problem found is the error)
_CHECKS = (_check_choices, _check_counts, _check_rates, _check_split, _check_optimizer,
           _check_device_field, _check_combinations)


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        if raw.lower() in ("none", "null"):
            return None
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        if "," in raw:  # a bare comma list: 0.1,0.5
            return [_parse_value(part.strip()) for part in raw.split(",")]
        return raw


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's annotation, converting int->float and str->number where lossless."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(key, value, option)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise TypeError(errors[0])
    if origin is list:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # rates=0.3: one value, every site
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{key} must be a list, but got {type(value).__name__} {value!r}")
        return [_coerce(key, item, args[0]) for item in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"{key} must be true or false, but got {value!r}")
    if hint in (int, float):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise TypeError(f"{key} must be a number, but got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{key} must be {'an integer' if hint is int else 'a number'}, but got {value!r}")
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise TypeError(f"{key} must be an integer, but got {value!r}")
            return int(value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"{key} must be a string, but got {value!r}")
        return value
    return value
