"""Build the model a lab run trains: the factory's model, an input site, droplab's sites, the run's rates.

Every model goes through the same steps, built-in or the user's:

1. the factory (:mod:`droplab.lab.factories`) is called with the arguments it declares among
   ``input_shape``, ``n_outputs`` and the config's fields (``width`` only when set);
2. ``input_site`` puts a :class:`droplab.nn.InputDropout` (at p = 0.2) before the model, as
   ``nn.Sequential(input_drop, model)``: the first site in :func:`droplab.sites` order;
3. :func:`droplab.convert` swaps torch.nn dropout modules for droplab's with a seed derived from the
   run's seed, and droplab modules built unseeded are seeded the same way, so every mask is
   counter-based and a resumed run draws exactly the masks it would have;
4. ``rates`` sets every site (one value for all, or one per site in :func:`droplab.sites` order);
   ``None`` keeps the rates as built.

:func:`site_rates` says which rate each site of a model as built gets, so a stored config can hold the
rates that ran, one per site, and :func:`applied_config` leaves out the model arguments the factory does
not take.

Example::

    >>> import torch, droplab
    >>> from droplab.lab.config import ExperimentConfig
    >>> model = build_model(ExperimentConfig(width=8, rates=[0.1, 0.25, 0.25], input_site=True), (40,), 10)
    >>> [(s.name, s.p) for s in droplab.sites(model)]
    [('input_drop', 0.1), ('model.net.3', 0.25), ('model.net.6', 0.25)]
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from .. import convert, sites
from .. import nn as dnn
from .errors import UserCodeError, UserError
from .factories import call_factory, code_files, resolve

__all__ = ["build_model", "model_seed", "apply_rates", "site_rates", "with_model_defaults", "model_arguments",
           "applied_config", "INPUT_RATE"]

#: the input site's rate as built (Srivastava et al. 2014 kept 80% of the input pixels)
INPUT_RATE = 0.2

# config fields that describe the run, not the model: never offered to a model factory
_NOT_MODEL_ARGS = {"name", "dataset", "label_column", "val_fraction", "test_fraction", "model", "input_site",
                   "schedule", "epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "max_norm",
                   "early_stopping_patience", "augment", "device", "threads", "rates", "task", "nll_head"}


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


def site_rates(model_or_count: nn.Module | int, config) -> list[float]:
    """The rate of each site of a model as built (or of ``n`` sites) that ``config.rates`` asks for.

    One rate per site in :func:`droplab.sites` order; with ``config.rates`` None, the rates as built
    (a model is needed for those).

    Raises:
        UserError: ``config.rates`` gives per-site rates for another number of sites.
    """
    found = sites(model_or_count) if isinstance(model_or_count, nn.Module) else None
    n_sites = len(found) if found is not None else int(model_or_count)
    if config.rates is None:
        if found is None:
            raise ValueError("site_rates needs the model to read the rates as built (config.rates is None)")
        return [float(site.p) for site in found]
    if len(config.rates) == 1:
        return [float(config.rates[0])] * n_sites
    if len(config.rates) != n_sites:
        raise UserError(f"rates gives {len(config.rates)} per-site rates but the model has {n_sites} dropout "
                        "site(s) (droplab.sites order, the input site first); give one rate, or one per site")
    return [float(r) for r in config.rates]


def apply_rates(model: nn.Module, config) -> nn.Module:
    """Set the sites of a model as built to ``config.rates`` (see :func:`site_rates`); None leaves them."""
    if config.rates is None:
        return model
    found = sites(model)
    for site, p in zip(found, site_rates(len(found), config)):
        model = _set_site(model, site, p)
    return model


def build_model(config, input_shape: Sequence[int], n_outputs: int) -> nn.Module:
    """The model of ``config`` for inputs of one example's shape ``input_shape`` and ``n_outputs`` outputs.

    Its sites carry ``config.rates`` (``None``: as built). Initialization draws from torch's default
    generator (the trainer seeds it with ``config.seed``).
    """
    factory = resolve(config.model, "model")
    model = call_factory(factory, config.model, _factory_args(config, input_shape, n_outputs))
    if not isinstance(model, nn.Module):
        raise UserError(f"model factory {config.model!r} returned a {type(model).__name__}, not a torch.nn.Module")
    seed = model_seed(config)
    if config.input_site:
        model = nn.Sequential(OrderedDict(input_drop=dnn.InputDropout(INPUT_RATE, seed=seed), model=model))
    try:
        # every site seeded (so every mask of the run is resumable); seeds the factory chose stay
        model = convert(model, seed=seed + 1, keep_seeds=True)
    except ValueError as error:
        raise UserCodeError(f"droplab.convert of {config.model}", error, code_files(factory)) from error
    return apply_rates(model, config)


def with_model_defaults(config, explicit: set[str]):
    """``config`` with the model factory's ``lab_defaults`` (a dict attribute, e.g. ``{"epochs": 20}``) applied to
    the fields not in ``explicit`` (those the user set). Any factory may carry one."""
    defaults = getattr(resolve(config.model, "model"), "lab_defaults", None) or {}
    changes = {key: value for key, value in defaults.items() if key not in explicit}
    return config.replace(**changes) if changes else config


def model_arguments(config) -> set[str]:
    """The config fields ``config.model``'s factory takes (all it is offered, when it has ``**kwargs``)."""
    from .factories import declared

    offered = {f.name for f in dataclasses.fields(config)} - _NOT_MODEL_ARGS
    names, varkw, _ = declared(resolve(config.model, "model"))
    return offered if varkw else offered & names


def applied_config(config) -> dict:
    """``config.to_dict()`` without the model arguments its factory does not take (they did not apply).

    ``seed`` always stays: it seeds the data order and the masks too.
    """
    unused = ({f.name for f in dataclasses.fields(config)} - _NOT_MODEL_ARGS - {"seed"}) - model_arguments(config)
    return {key: value for key, value in config.to_dict().items() if key not in unused}
