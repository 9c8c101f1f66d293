"""The keys that set rates before ``rates`` was the one rate field, read into ``rates`` and ``input_site``.

Until droplab 0.2, five config keys set a run's dropout rates: ``dropout`` (every hidden site of a
built-in model), ``layer_rates`` (one per hidden layer), ``input_dropout`` (a rate on an input site
the lab added), ``rates`` (every site, after the model was built) and ``rate_scale`` (a multiplier on
the rates as built). Config files and stored runs written then still load: :func:`upgrade` turns the
old keys into ``rates`` (one per site, in :func:`droplab.sites` order) and ``input_site``, exactly as
the old lab built the model, and warns (``DeprecationWarning``) with what each became.

For a user's model factory the config never recorded the factory's own rates, so two old settings
cannot be translated: a rate scale other than 0 and 1 (the old ``halved`` run) and an input rate other
than 0.2 (the input site's rate as built). Those raise a ``UserError`` asking for the rates.

Example::

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     upgrade({"model": "mlp", "dropout": 0.3, "input_dropout": 0.2, "rate_scale": 0.5})
    {'model': 'mlp', 'input_site': True, 'rates': [0.1, 0.15, 0.15]}
    >>> "deprecated" in str(caught[0].message)
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from .errors import UserError

__all__ = ["LEGACY_KEYS", "upgrade"]

#: the config keys that set rates before ``rates`` was the only one
LEGACY_KEYS = ("dropout", "layer_rates", "input_dropout", "rate_scale")

_BUILTIN_SITES_PER_LAYER = {"mlp": 1, "cnn1d": 1, "gru": 1, "transformer": 4}  # attention, residual, ffn, residual
_OLD_DROPOUT = 0.5  # the old default of ``dropout``
_INPUT_AS_BUILT = 0.2  # the input site's rate as built (ExperimentConfig.input_site)


def upgrade(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with the old rate keys replaced by ``rates`` and ``input_site`` (unchanged without them).

    Raises:
        UserError: an old value is not a rate, or a model factory's old rates cannot be expressed.
    """
    data = dict(data)
    old = {key: data.pop(key) for key in LEGACY_KEYS if key in data}
    if not old:
        return data
    input_rate = _number(old.get("input_dropout", 0.0), "input_dropout")
    scale = _number(old.get("rate_scale", 1.0), "rate_scale", upper=None)
    if input_rate > 0 and "input_site" not in data:
        data["input_site"] = True
    if data.get("rates") is None:
        rates = _rates(data, old, input_rate, scale)
        if rates is not None:
            data["rates"] = rates
        became = f"rates = {rates}" if rates is not None else "rates = null (the rates the model was built with)"
    else:
        became = f"ignored: rates = {data['rates']} is set and wins, as it did"
    if input_rate > 0:
        became += ", input_site = true"
    given = ", ".join(f"{key} = {value!r}" for key, value in old.items())
    warnings.warn(f"deprecated config keys ({', '.join(old)}): one field, rates, sets every site's rate (in "
                  f"droplab.sites order, the input site first). {given} was read as {became}; write that instead",
                  DeprecationWarning, stacklevel=4)
    return data


def _number(value: Any, key: str, upper: float | None = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
            or (upper is not None and value > upper):
        bound = f"between 0 and {upper:g}" if upper is not None else "a number >= 0"
        raise UserError(f"{key} (deprecated) must be {bound}, but got {value!r}")
    return float(value)


def _hidden(data: dict, old: dict) -> list[float] | None:
    """The old hidden rates of a built-in model, one per site; None where the model's own rates applied."""
    layer_rates, dropout = old.get("layer_rates"), old.get("dropout")
    model = str(data.get("model", "mlp"))
    if model not in _BUILTIN_SITES_PER_LAYER:  # a factory got dropout/layer_rates only if it declared them
        if layer_rates is not None:
            return [_number(r, "layer_rates") for r in layer_rates]
        if dropout is not None and dropout != _OLD_DROPOUT:
            return [_number(dropout, "dropout")]
        return None
    depth = data.get("depth", 2)
    per_layer = [_number(r, "layer_rates") for r in layer_rates] if layer_rates is not None else \
        [_number(_OLD_DROPOUT if dropout is None else dropout, "dropout")] * int(depth)
    return [rate for rate in per_layer for _ in range(_BUILTIN_SITES_PER_LAYER[model])]


def _rates(data: dict, old: dict, input_rate: float, scale: float) -> list[float] | None:
    """The old sites' rates, one per site (one value when they are all equal); None: as built."""
    if scale == 0:
        return [0.0]
    hidden = _hidden(data, old)
    factory = str(data.get("model", "mlp")) not in _BUILTIN_SITES_PER_LAYER
    if factory and hidden is None and (scale != 1 or input_rate not in (0.0, _INPUT_AS_BUILT)):
        raise UserError(f"this config's old rate keys (input_dropout = {input_rate:g}, rate_scale = {scale:g}) act on "
                        f"the rates model factory {data.get('model')!r} builds, which the config does not record: "
                        "give the rates instead (rates = [...], one per site in droplab.sites order; droplab "
                        "inspect lists the sites)")
    if hidden is None:
        return None
    if factory and input_rate > 0 and len(hidden) == 1 and hidden[0] != input_rate:
        raise UserError(f"this config's old rate keys (input_dropout = {input_rate:g}, dropout = {hidden[0]:g}) set "
                        f"two rates on model factory {data.get('model')!r}, whose number of sites the config does not "
                        "record: give the rates instead (rates = [...], one per site in droplab.sites order, the "
                        "input site first; droplab inspect lists the sites)")
    rates = ([input_rate] if input_rate > 0 and not (factory and len(hidden) == 1) else []) + hidden
    rates = [rate * scale for rate in rates]  # the old lab's own product: the same floats, the same masks
    if any(rate > 1 for rate in rates):
        raise UserError(f"rate_scale = {scale:g} (deprecated) takes a site's rate above 1: {rates}")
    return rates[:1] if all(rate == rates[0] for rate in rates) else rates
