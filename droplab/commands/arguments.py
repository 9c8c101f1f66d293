"""Arguments several commands share: the model and data (``--model``, ``--dataset``, ``--task``), and the config.

A command's :class:`~droplab.lab.config.ExperimentConfig` is built one way everywhere
(:func:`config_from_args`): the defaults (or a stored config), then ``--config FILE.toml``, then the
command's shorthand flags, then each ``--set KEY=VALUE`` (later wins); finally the model factory's own
``lab_defaults`` fill the keys the user did not set.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ..lab.config import ExperimentConfig

__all__ = ["add_model_arguments", "add_config_arguments", "config_from_args", "input_site_flag", "with_input_rate"]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--dataset``, ``--task`` and ``--input-dropout``: shared by compare, sweep and uncertainty."""
    parser.add_argument("--model", help="mlp (default), cnn1d, gru, transformer, or your factory: FILE.py:NAME or "
                                        "package.module:NAME (called with the arguments it declares among "
                                        "input_shape, n_outputs and config fields)")
    parser.add_argument("--dataset", help="mnist1d (default), digits, a .npz/.csv path, or your factory FILE.py:NAME "
                                          "returning (train, val[, test]) datasets of (x, y)")
    parser.add_argument("--task", choices=("classification", "regression"),
                        help="inferred from the targets when absent (non-integer floats: regression)")
    parser.add_argument("--input-dropout", type=float, metavar="P",
                        help="a dropout site on the model's input at rate P, the first site (input_site=true and "
                             "that site's rate; 0 removes it)")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE.toml`` and repeatable ``--set KEY=VALUE``."""
    parser.add_argument("--config", metavar="TOML", help="experiment config file (unknown keys are an error)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable)")


def config_from_args(args: argparse.Namespace, shorthand: Mapping[str, Any], *,
                     stored: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """The config a command runs: defaults (or ``stored``), ``--config``, ``shorthand``, ``--set``, model defaults.

    Args:
        args: the parsed arguments (``config`` and ``set`` are read when present).
        shorthand: config keys the command's own flags give (``None`` values are not given).
        stored: a stored config to start from instead of the defaults (a checkpoint's); the model's
            ``lab_defaults`` are then not applied, since the stored config already ran. Default: None.
    """
    from ..lab.build import with_model_defaults

    toml = getattr(args, "config", None)
    if stored is not None:
        base = ExperimentConfig.from_dict(stored)
    else:
        base = ExperimentConfig.from_toml(toml) if toml else ExperimentConfig()
    changes = {key: value for key, value in shorthand.items() if value is not None}
    if changes:
        base = base.replace(**changes)
    overrides = list(getattr(args, "set", None) or [])
    base = base.with_overrides(overrides)
    if stored is not None:
        return base
    explicit = set(changes) | {item.split("=", 1)[0].strip() for item in overrides}
    if toml:
        explicit |= _toml_keys(toml)
    return with_model_defaults(base, explicit)


def _toml_keys(path: str) -> set[str]:
    """The config keys a TOML file sets (an ``[experiment]`` table unwrapped)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: ExperimentConfig.from_toml already asked for tomli
        import tomli as tomllib  # type: ignore[no-redef]
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return set(data.get("experiment", data))


def input_site_flag(args: argparse.Namespace) -> bool | None:
    """``input_site`` as ``--input-dropout P`` sets it (None when the flag is absent)."""
    rate = getattr(args, "input_dropout", None)
    return None if rate is None else rate > 0


def with_input_rate(config: ExperimentConfig, args: argparse.Namespace, prepared) -> ExperimentConfig:
    """``config`` with ``--input-dropout P`` as the input site's rate and every other site's rate as it was.

    ``prepared`` (:func:`droplab.lab.preflight.check_before_training` of ``[config]``) knows the model's
    sites, so the config can say each site's rate.
    """
    from ..functional import check_probability

    rate = getattr(args, "input_dropout", None)
    if not rate:
        return config
    rates = prepared.rates_for(config)
    rates[0] = check_probability(rate, "--input-dropout")
    return config.replace(rates=rates)
