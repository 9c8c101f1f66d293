"""Build the model a lab run trains: the factory's model, input dropout, droplab's sites, the run's rates.

Every model goes through the same steps, built-in or the user's:

1. the factory (:mod:`droplab.lab.factories`) is called with the arguments it declares among
   ``input_shape``, ``n_outputs`` and the config's fields (``width`` only when set);
2. ``input_dropout > 0`` wraps the model's input in a droplab dropout site (:class:`InputDropout`), the
   first site in :func:`droplab.sites` order;
3. :func:`droplab.convert` swaps torch.nn dropout modules for droplab's with a seed derived from the
   run's seed, and droplab modules built unseeded are seeded the same way, so every mask is
   counter-based and a resumed run draws exactly the masks it would have;
4. the rates: ``rates`` sets every site (one value for all, or one per site in :func:`droplab.sites`
   order), else ``rate_scale`` multiplies every site's rate as built (0: off, 0.5: halved).

Example::

    >>> import torch, droplab
    >>> from droplab.lab.config import ExperimentConfig
    >>> model = build_model(ExperimentConfig(width=8, rate_scale=0.5, input_dropout=0.2), (40,), 10)
    >>> [round(s.p, 3) for s in droplab.sites(model)]
    [0.1, 0.25, 0.25]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from .. import convert, sites
from .. import nn as dnn
from .errors import UserCodeError, UserError
from .factories import call_factory, code_files, resolve

__all__ = ["InputDropout", "build_model", "model_seed", "apply_rates", "site_rates", "with_model_defaults"]

# config fields that describe the run, not the model: never offered to a model factory
_NOT_MODEL_ARGS = {"name", "dataset", "label_column", "val_fraction", "test_fraction", "model", "input_dropout",
                   "schedule", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "max_norm",
                   "early_stopping_patience", "augment", "device", "threads", "rates", "rate_scale", "task",
                   "nll_head"}


class InputDropout(nn.Module):
    """``model(dropout(x), *args)``: dropout on any model's input, registered first so it is the first site.

    Args:
        model: the wrapped model.
        p: the input drop rate.
        seed: the site's seed (the lab derives it from the run's seed).
    """

    def __init__(self, model: nn.Module, p: float, seed: int) -> None:
        super().__init__()
        self.input_drop = dnn.Dropout(p, seed=seed)
        self.model = model

    def forward(self, x: torch.Tensor, *args, **kwargs):
        return self.model(self.input_drop(x), *args, **kwargs)


def model_seed(config) -> int:
    """The seed the lab gives converted and input sites: a function of the run's seed only."""
    return (int(config.seed) * 2_654_435_761 + 97) % 2**62


def _factory_args(config, input_shape: Sequence[int], n_outputs: int) -> dict:
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in _NOT_MODEL_ARGS}
    if fields.get("width") is None:
        fields.pop("width", None)  # the factory's own default
    return {"input_shape": tuple(int(n) for n in input_shape), "n_outputs": int(n_outputs), **fields}


def _learned(module: nn.Module) -> bool:
    return bool(getattr(module, "rate_is_learned", False))


def _set_site(model: nn.Module, site, p: float) -> nn.Module:
    """Set one site's rate; a learned-rate wrapper set to 0 is replaced by the layer it wraps (no site)."""
    module = site.module
    if _learned(module) and p == 0:
        parent_name, _, child = site.name.rpartition(".")
        if not site.name:
            return module.layer
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module.layer)
        return model
    if isinstance(module, (nn.RNNBase, nn.MultiheadAttention)):
        module.dropout = float(p)  # torch's dropout= argument, not a module with a rate
    else:
        module.p = p
    return model


def site_rates(config, n_sites: int) -> list[float] | None:
    """The rate of each of ``n_sites`` sites the config asks for, or None to keep them as built."""
    if config.rates is not None:
        if len(config.rates) == 1:
            return [float(config.rates[0])] * n_sites
        if len(config.rates) != n_sites:
            raise UserError(f"rates gives {len(config.rates)} per-site rates but the model has {n_sites} dropout "
                            "site(s) (droplab.sites order, input dropout first); give one rate, or one per site")
        return [float(r) for r in config.rates]
    return None


def apply_rates(model: nn.Module, config) -> nn.Module:
    """Set the sites' rates from ``config.rates`` or ``config.rate_scale`` (see the module docstring)."""
    found = sites(model)
    wanted = site_rates(config, len(found))
    if wanted is None:
        if config.rate_scale == 1.0:
            return model
        wanted = [site.p * config.rate_scale for site in found]
    for rate in wanted:
        if not 0 <= rate <= 1:
            raise UserError(f"rate_scale={config.rate_scale} takes a site's rate to {rate:.3g}, outside [0, 1]")
    for site, p in zip(found, wanted):
        model = _set_site(model, site, p)
    return model


def build_model(config, input_shape: Sequence[int], n_outputs: int) -> nn.Module:
    """The model of ``config`` for inputs of one example's shape ``input_shape`` and ``n_outputs`` outputs.

    Initialization draws from torch's default generator (the trainer seeds it with ``config.seed``).
    """
    factory = resolve(config.model, "model")
    model = call_factory(factory, config.model, _factory_args(config, input_shape, n_outputs))
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory {config.model!r} returned a {type(model).__name__}, not a torch.nn.Module")
    seed = model_seed(config)
    if config.input_dropout > 0:
        model = InputDropout(model, config.input_dropout, seed=seed)
    try:
        model = convert(model, seed=seed + 1)
    except ValueError as error:
        raise UserCodeError(f"droplab.convert of {config.model}", error, code_files(factory)) from error
    _seed_unseeded(model, seed + 100_003)
    return apply_rates(model, config)


def _seed_unseeded(model: nn.Module, seed: int) -> None:
    """Give droplab modules built with ``seed=None`` counters too, so every mask of the run is resumable."""
    unseeded = [m for m in model.modules() if isinstance(m, dnn.StochasticModule) and not getattr(m, "seeded", True)]
    for index, module in enumerate(unseeded):
        module.reseed(seed + index)


def with_model_defaults(config, explicit: set[str]):
    """``config`` with the model factory's ``lab_defaults`` (a dict attribute, e.g. ``{"epochs": 20}``) applied to
    the fields not in ``explicit`` (those the user set). Any factory may carry one."""
    defaults = getattr(resolve(config.model, "model"), "lab_defaults", None) or {}
    changes = {key: value for key, value in defaults.items() if key not in explicit}
    return config.replace(**changes) if changes else config
