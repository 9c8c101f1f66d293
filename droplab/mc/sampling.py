"""What "sample t of MC seed s" means for one site, and how a site draws several samples in one pass.

The state of a Monte-Carlo pass lives here, not in the modules: :func:`mc_sampling` sets the active
:class:`MCSampling`; :func:`mc_activate` routes activated droplab modules' forwards through
:func:`sliced_forward`; :func:`mc_activate` also sets each module's ``counter_source`` to the counter hook, which
gives the module's ``_next_counter`` the sample's ``(seed, step)`` instead of its training counters,
which therefore never advance.

Site keys. Sample ``t`` of a site draws with seed ``mc_seed(key, s, k)`` and step ``t``, where ``k``
is the input batch (0 with consistent masks) and ``key`` is

* the module's own ``seed`` buffer for a seeded droplab module (``seed=int``, or a seeded
  :func:`droplab.convert`, which derives one seed per site), so MC samples follow the seed;
* otherwise :func:`site_key` of the site's qualified name (``"encoder.drop"``, or
  ``"encoder.attn#0"`` for a functional call): unseeded modules keep no counters, and the name makes
  the samples reproducible for a given MC seed and independent across sites.

A functional call that :func:`droplab.convert` routed is keyed as the droplab module that draws it
(:func:`key_of`). A site used several times in one pass draws with ``mc_seed(key, s, k, u)`` at its
``u``-th use (:func:`next_use`): independent masks at each use, as in training.

Stacked samples. A pass stacks ``count`` samples along the batch axis, sample-major. A site whose
input has exactly ``rows`` rows (the input batch, not yet replicated: the deterministic prefix ran
once) replicates it ``count`` times first; then it runs once per sample slice with that sample's
counters. With ``consistent=True`` a row's mask is the one a batch of one draws; for sites whose
effect is element-wise affine in the input (``y = a * x + b`` with ``a, b`` from the mask: dropout,
channel, alpha, Gaussian and attention dropout, DropPath, DropBlock, locked dropout) it is drawn once
per sample at batch size one and broadcast along the batch, so the pass costs what the default path
costs; other sites (DropConnect, recurrent and embedding dropout) run once per row.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .._modes import training_flags_restored
from ..nn import StochasticModule
from ..rng import philox4x32_scalar, split_seed

__all__ = ["MCSampling", "MCBatchingError", "mc_seed", "site_key", "key_of", "mc_sampling", "mc_activate",
           "sliced_forward", "run_sliced", "active", "current_sample", "next_use", "counters", "batch_axis",
           "replicate", "AFFINE_SITES"]


@dataclass(frozen=True)
class MCSampling:
    """What a Monte-Carlo pass draws: samples ``first .. first + count - 1`` of MC seed ``seed``.

    ``batch`` numbers the input batch (folded into the seed so different input batches get independent
    masks); ``consistent`` draws each row's mask as if it were a batch of one (``batch`` is then
    ignored); ``rows`` is the input batch's size before replication (None: inputs arrive replicated);
    ``keys`` maps ``id(module)`` to the site key of sites that have no seed of their own.
    """

    seed: int
    first: int = 0
    count: int = 1
    batch: int = 0
    consistent: bool = False
    rows: int | None = None
    keys: Mapping[int, int] = field(default_factory=dict, compare=False, hash=False)


class MCBatchingError(RuntimeError):
    """A site cannot draw several stacked samples (or per-row masks) in one pass; sample it in a loop."""


_MC = threading.local()  # .spec: the active MCSampling; .sample: the sample index being drawn
_MC_WORD = 0x4D43  # "MC": keeps MC seeds apart from any other use of the fold


def mc_seed(site_seed: int, seed: int, batch: int = 0, use: int = 0) -> int:
    """The seed a site with key ``site_seed`` uses in MC pass ``seed`` on input batch ``batch``, at its
    ``use``-th use in the pass (0 for a site used once).

    One Philox4x32-10 block keyed by the site's key, counter ``(seed lo, seed hi, batch, 0x4D43 + use * 2**16)``;
    the first two output words form the 64-bit result (low word first).
    """
    if not 0 <= use < 2**16:
        raise ValueError(f"use must be an int in [0, 65536), but got {use!r}")
    s = int(seed) % 2**64
    w = philox4x32_scalar((s & 0xFFFFFFFF, s >> 32, int(batch), _MC_WORD + (int(use) << 16)),
                          split_seed(int(site_seed)))
    return w[0] | (w[1] << 32)


def site_key(name: str) -> int:
    """The 64-bit key of a site without a seed: the first 8 bytes of BLAKE2b of its qualified name."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def active() -> MCSampling | None:
    """The MC sampling in force in this thread, or None."""
    return getattr(_MC, "spec", None)


def current_sample() -> int | None:
    """The sample a site is drawing right now (inside :func:`run_sliced`), or None."""
    return getattr(_MC, "sample", None)


def next_use(site: object) -> int:
    """How many times ``site`` (any hashable name for it) was used before in the current pass; counts this use.

    Inside a site drawing one slice (a sample, or a row of a consistent pass), uses are counted within
    that slice's call, so every slice of a nested site draws as its first use does.
    """
    uses = _MC.__dict__.get("nested") if current_sample() is not None else None
    if uses is None:
        uses = _MC.__dict__.setdefault("uses", {})
    use = uses.get(site, 0)
    uses[site] = use + 1
    return use


def _slice_call(call: Callable, *args, **kwargs):
    """One call of a site on one slice: nested sites count their uses from 0 again."""
    previous, _MC.nested = _MC.__dict__.get("nested"), {}
    try:
        return call(*args, **kwargs)
    finally:
        _MC.nested = previous


@contextlib.contextmanager
def mc_sampling(spec: MCSampling) -> Iterator[None]:
    """Inside the block, activated sites (:func:`mc_activate`) draw the samples ``spec`` names (one pass:
    every site's use count starts from 0)."""
    previous = getattr(_MC, "spec", None), _MC.__dict__.get("uses"), _MC.__dict__.get("using")
    _MC.spec, _MC.uses, _MC.using = spec, {}, {}
    try:
        yield
    finally:
        _MC.spec, _MC.uses, _MC.using = previous


def _signed(value: int) -> torch.Tensor:
    value %= 2**64
    return torch.tensor(value - 2**64 if value >= 2**63 else value, dtype=torch.int64)


def key_of(module: nn.Module, keys: Mapping[int, int] | None = None) -> int:
    """The MC key of a droplab module: its ``seed`` when seeded, else its site key (set by :func:`mc_activate`,
    or found in ``keys``, ``id(module)`` to key)."""
    seed = module._buffers.get("seed")
    if seed is not None:
        return int(seed)
    if "_mc_key" in module.__dict__:  # set by mc_activate
        return module.__dict__["_mc_key"]
    if keys is not None and id(module) in keys:
        return keys[id(module)]
    raise ValueError(f"{type(module).__name__} has no seed and no site key: unseeded sites are sampled through "
                     "droplab.mc.predict, which names them")


def _sample_counter(module: StochasticModule) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The counter hook: ``(seed, step)`` of the sample being drawn, or None outside MC sampling."""
    spec = active()
    if spec is None:
        return None
    sample = current_sample()
    if sample is None:  # a mask drawn outside forward (e.g. a recurrent mask drawn by its owner)
        if spec.count != 1 or spec.consistent:
            raise MCBatchingError(f"{type(module).__name__} draws a mask outside its forward, so MC "
                                  "sampling cannot split stacked samples or rows for it")
        sample = spec.first
    use = _MC.__dict__.get("using", {}).get(id(module), 0)
    seed = mc_seed(key_of(module, spec.keys), spec.seed, 0 if spec.consistent else spec.batch, use)
    return _signed(seed), torch.tensor(sample, dtype=torch.int64)


def counters(key: int, use: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(seed, step)`` of the current sample for a functional site with ``key``, at its ``use``-th use."""
    spec = active()
    seed = mc_seed(key, spec.seed, 0 if spec.consistent else spec.batch, use)
    return _signed(seed), torch.tensor(current_sample(), dtype=torch.int64)


# --------------------------------------------------------------------------------- batch slicing

def batch_axis(module: nn.Module) -> int:
    """The batch axis of a site's input: 1 for a sequence site with ``batch_first=False``, else 0."""
    return 0 if getattr(module, "batch_first", True) else 1


def _axis(value: torch.Tensor, dim: int, size: int) -> int | None:
    """The batch axis of ``value``: ``dim`` if it has ``size`` rows there, else the first axis that does.

    The fallback serves sites whose arguments or outputs put the batch elsewhere, e.g. the ``(L, N, H)``
    state of a batch-first RNN.
    """
    if value.dim() > dim and value.shape[dim] == size:
        return dim
    return next((axis for axis, n in enumerate(value.shape) if n == size), None)


def _map(value, fn: Callable[[torch.Tensor], torch.Tensor]):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_map(v, fn) for v in value)
    return value


def _narrow(value, dim: int, rows: int, start: int, length: int):
    def cut(t):
        axis = _axis(t, dim, rows)
        return t if axis is None else t.narrow(axis, start, length)
    return _map(value, cut)


def replicate(value, dim: int, rows: int, count: int):
    """Every tensor in ``value`` with ``rows`` rows on its batch axis, repeated ``count`` times sample-major."""
    def repeat(t):
        axis = _axis(t, dim, rows)
        if axis is None:
            return t
        shape = list(t.shape)
        expanded = t.unsqueeze(axis).expand(*shape[:axis], count, *shape[axis:])
        return expanded.reshape(*shape[:axis], count * rows, *shape[axis + 1:])
    return _map(value, repeat)


def _cat(parts: list, dim: int, rows: int):
    first = parts[0]
    if isinstance(first, torch.Tensor):
        axis = _axis(first, dim, rows)
        if axis is None:
            raise ValueError(f"MC sampling cannot find the batch axis (size {rows}) of an output of shape "
                             f"{tuple(first.shape)}")
        return torch.cat(parts, axis)
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([p[i] for p in parts], dim, rows) for i in range(len(first)))
    return first


def _batch_rows(args: Sequence, dim: int) -> int:
    """Rows along ``dim`` of the first tensor argument (searching tuples), -1 if there is none."""
    for value in args:
        if isinstance(value, torch.Tensor) and value.dim() > dim:
            return value.shape[dim]
        if isinstance(value, (tuple, list)):
            rows = _batch_rows(value, dim)
            if rows >= 0:
                return rows
    return -1


def _consistent_affine(call: Callable, x: torch.Tensor, dim: int, per_sample: int, spec: MCSampling):
    """Each sample's mask drawn once at batch size one, applied to all its rows as ``a * x + b``."""
    probe_shape = list(x.shape)
    probe_shape[dim] = 1
    parts = []
    for j in range(spec.count):
        _MC.sample = spec.first + j
        offset = _slice_call(call, x.new_zeros(probe_shape))  # fresh probes: an in-place site writes into them
        scale = _slice_call(call, x.new_ones(probe_shape)) - offset
        block = x.narrow(dim, j * per_sample, per_sample) * scale
        parts.append(block if not bool(offset.any()) else block + offset)
    return torch.cat(parts, dim) if len(parts) > 1 else parts[0]


def run_sliced(call: Callable, args: tuple, kwargs: dict, *, dim: int = 0, affine: bool = False,
               name: str = "site"):
    """Run ``call`` once per stacked sample (its counters set), replicating an unreplicated input first.

    ``affine``: ``call`` is element-wise affine in its single tensor argument, so consistent masks are
    drawn once per sample (see the module docstring). Outside MC sampling, or nested inside a site
    already drawing a slice, ``call`` simply runs.
    """
    spec = active()
    if spec is None or current_sample() is not None:
        return call(*args, **kwargs)
    rows = _batch_rows(args, dim)
    if spec.rows is not None and rows == spec.rows and spec.count > 1:
        args, kwargs = replicate(args, dim, rows, spec.count), replicate(kwargs, dim, rows, spec.count)
        args, kwargs = tuple(args), dict(kwargs)
        rows *= spec.count
    if rows < 0 or rows % spec.count:
        raise ValueError(f"{name} under MC sampling expects {spec.count} stacked samples along "
                         f"dimension {dim}, but its input has {rows} rows there")
    per_sample = rows // spec.count
    try:
        if spec.consistent and affine and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            return _consistent_affine(call, args[0], dim, per_sample, spec)
        outputs = []
        for j in range(spec.count):
            _MC.sample = spec.first + j
            starts = range(j * per_sample, (j + 1) * per_sample) if spec.consistent else [j * per_sample]
            length = 1 if spec.consistent else per_sample
            outputs += [_slice_call(call, *_narrow(args, dim, rows, start, length),
                                    **{k: _narrow(v, dim, rows, start, length) for k, v in kwargs.items()})
                        for start in starts]
    finally:
        _MC.sample = None
    return outputs[0] if len(outputs) == 1 else _cat(outputs, dim, length)


def _affine_classes() -> tuple[type, ...]:
    from .. import nn as dnn

    names = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
             "GaussianDropout", "AttentionDropout", "DropPath", "DropBlock1d", "DropBlock2d", "DropBlock3d",
             "LockedDropout", "InputDropout")
    return tuple(getattr(dnn, n) for n in names if hasattr(dnn, n))


AFFINE_SITES: list[type] = []


def sliced_forward(module: StochasticModule, *args, **kwargs):
    """A droplab module's forward under MC sampling (installed by :func:`mc_activate`)."""
    if not AFFINE_SITES:
        AFFINE_SITES.extend(_affine_classes())
    if active() is not None:  # one use of the site in this pass (or slice), whatever slices it runs on
        _MC.using[id(module)] = next_use(("module", id(module)))
    forward = type(module).forward
    affine = isinstance(module, tuple(AFFINE_SITES))
    return run_sliced(lambda *a, **k: forward(module, *a, **k), args, kwargs, dim=batch_axis(module),
                      affine=affine, name=type(module).__name__)


@contextlib.contextmanager
def mc_activate(modules: Iterable[StochasticModule], keys: Mapping[int, int] | None = None) -> Iterator[None]:
    """Make ``modules`` stochastic and route their forward through :func:`sliced_forward`.

    ``keys`` (``id(module)`` to site key) names the sites that have no seed of their own. Training
    flags and forwards are restored on exit, also after an error. Outside :func:`mc_sampling` an
    activated module behaves as in training.
    """
    modules = list(dict.fromkeys(modules))
    keys = keys or {}
    with training_flags_restored(dict.fromkeys(sub for m in modules for sub in m.modules())):
        try:
            for module in modules:
                module.train()
                # instance attributes: the class stays untouched
                module.forward = _bound(module)
                module.counter_source = _sample_counter
                if id(module) in keys:
                    module.__dict__["_mc_key"] = keys[id(module)]  # the key of a site without a seed
            yield
        finally:
            for module in modules:
                module.__dict__.pop("forward", None)
                module.__dict__.pop("counter_source", None)
                module.__dict__.pop("_mc_key", None)


def _bound(module: StochasticModule) -> Callable:
    def forward(*args, **kwargs):
        return sliced_forward(module, *args, **kwargs)
    return forward
