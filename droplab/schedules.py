r"""Dropout-rate schedules: pure functions of the step, and a scheduler that applies them to a model.

A schedule is a callable ``schedule(t) -> p`` of the (step or epoch) count ``t >= 0``, with no state:
the same ``t`` always gives the same rate, so a resumed run only needs ``t``. The factories below
validate their arguments and return small frozen objects whose ``repr`` shows the parameters.

:class:`DropoutScheduler` sets the rate of every dropout site of a model (or of named groups, each
with its own schedule) at each ``.step()``; the change takes effect at the next forward, compiled or
not, and ``state_dict`` / ``load_state_dict`` resume the same sequence.

Example::

    sched = DropoutScheduler(model, linear(0.0, 0.3, steps=1000))
    for batch in loader:
        loss = train_step(model, batch)
        sched.step()
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from .conversion import match_sites
from .functional import check_probability
from .graph.routing import mark_rate_set

__all__ = [
    "Schedule",
    "constant",
    "linear",
    "cosine",
    "stepwise",
    "cyclical",
    "curriculum",
    "early",
    "DropoutScheduler",
]


def _check_t(t: int) -> int:
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ValueError(f"the step t must be a non-negative int, but got {t!r}")
    return t


def _check_count(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, but got {value!r}")
    return value


def _check_rate(name: str, value: float) -> float:
    return check_probability(value, name=f"{name} (a dropout probability)")


class Schedule:
    """Base of the schedules: ``schedule(t)`` is the drop rate at step (or epoch) ``t``."""

    def __call__(self, t: int) -> float:
        return self.rate(_check_t(t))

    def rate(self, t: int) -> float:  # pragma: no cover - every schedule overrides it
        raise NotImplementedError


@dataclass(frozen=True)
class _Constant(Schedule):
    p: float

    def rate(self, t: int) -> float:
        return self.p


def constant(p: float) -> Schedule:
    """:math:`p(t) = p`."""
    return _Constant(_check_rate("p", p))


@dataclass(frozen=True)
class _Linear(Schedule):
    start: float
    end: float
    steps: int
    delay: int

    def rate(self, t: int) -> float:
        fraction = min(max(t - self.delay, 0) / self.steps, 1.0)
        return self.start + (self.end - self.start) * fraction


def linear(start: float, end: float, steps: int, *, delay: int = 0) -> Schedule:
    r""":math:`p(t) = p_0 + (p_1 - p_0)\min(\max(t - d, 0)/T, 1)`: ``start`` until ``delay``, a ramp over ``steps``."""
    return _Linear(_check_rate("start", start), _check_rate("end", end), _check_count("steps", steps),
                   _check_count("delay", delay, 0))


@dataclass(frozen=True)
class _Cosine(Schedule):
    start: float
    end: float
    steps: int

    def rate(self, t: int) -> float:
        fraction = min(t / self.steps, 1.0)
        return self.end + (self.start - self.end) * (1.0 + math.cos(math.pi * fraction)) / 2.0


def cosine(start: float, end: float, steps: int) -> Schedule:
    r"""Cosine ramp from ``start`` to ``end`` over ``steps``, then ``end``.

    :math:`p(t) = p_1 + (p_0 - p_1)\,\frac{1 + \cos(\pi \min(t/T, 1))}{2}`.
    """
    return _Cosine(_check_rate("start", start), _check_rate("end", end), _check_count("steps", steps))


@dataclass(frozen=True)
class _Stepwise(Schedule):
    rates: tuple[float, ...]
    milestones: tuple[int, ...]

    def rate(self, t: int) -> float:
        index = sum(1 for m in self.milestones if t >= m)
        return self.rates[index]


def stepwise(rates: Sequence[float], milestones: Sequence[int]) -> Schedule:
    r"""Piecewise constant at milestones: :math:`p(t) = r_i` for :math:`m_{i-1} \le t < m_i`.

    With :math:`m_{-1} = 0` and :math:`m_n = \infty`.

    ``rates`` has one more entry than the strictly increasing, positive ``milestones``.
    """
    rates = tuple(_check_rate(f"rates[{i}]", r) for i, r in enumerate(rates))
    milestones = tuple(_check_count(f"milestones[{i}]", m) for i, m in enumerate(milestones))
    if len(rates) != len(milestones) + 1:
        raise ValueError(f"stepwise needs one more rate than milestones, but got {len(rates)} rates and "
                         f"{len(milestones)} milestones")
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise ValueError(f"milestones must be strictly increasing, but got {milestones}")
    return _Stepwise(rates, milestones)


@dataclass(frozen=True)
class _Cyclical(Schedule):
    low: float
    high: float
    period: int

    def rate(self, t: int) -> float:
        phase = (t % self.period) / self.period
        return self.low + (self.high - self.low) * (1.0 - abs(2.0 * phase - 1.0))


def cyclical(low: float, high: float, period: int) -> Schedule:
    r"""Triangular cycles: :math:`p(t) = l + (h - l)(1 - |2\phi - 1|)`, :math:`\phi = (t \bmod P)/P`.

    Starts at ``low``, reaches ``high`` at mid-period, back to ``low`` at the period's end (Smith's
    triangular policy, applied to the rate).
    """
    return _Cyclical(_check_rate("low", low), _check_rate("high", high), _check_count("period", period, 2))


@dataclass(frozen=True)
class _Curriculum(Schedule):
    p_final: float
    gamma: float

    def rate(self, t: int) -> float:
        return self.p_final * -math.expm1(-self.gamma * t)


def curriculum(p_final: float, gamma: float) -> Schedule:
    r"""Curriculum dropout (Morerio et al. 2017): the keep rate decays from 1 to :math:`q_{min}`.

    :math:`q(t) = (1 - q_{min}) e^{-\gamma t} + q_{min}`, so :math:`p(t) = 1 - q(t) = p_{final}(1 - e^{-\gamma t})`
    with :math:`p_{final} = 1 - q_{min}`: no dropout at first, rising smoothly to ``p_final``.

    Reference: Morerio, Cavazza, Volpi, Vidal, Murino, "Curriculum Dropout", ICCV 2017.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a positive finite number, but got {gamma!r}")
    return _Curriculum(_check_rate("p_final", p_final), float(gamma))


@dataclass(frozen=True)
class _Early(Schedule):
    p: float
    until: int
    mode: str

    def rate(self, t: int) -> float:
        if t >= self.until:
            return 0.0
        return self.p if self.mode == "constant" else self.p * (1.0 - t / self.until)


def early(p: float, until: int, *, mode: str = "constant") -> Schedule:
    r"""Early dropout (Liu et al. 2023): dropout only for the first ``until`` steps, then none.

    ``mode="constant"``: :math:`p(t) = p` for :math:`t < k`, 0 after; ``mode="linear"``:
    :math:`p(t) = p\,(1 - t/k)` for :math:`t < k`, 0 after.

    Reference: Liu, Xu, Cheng, Yeung, Sun, Zhuang, Darrell, Luo, "Dropout Reduces Underfitting", ICML 2023.
    """
    if mode not in ("constant", "linear"):
        raise ValueError(f"mode must be one of ('constant', 'linear'), but got {mode!r}")
    return _Early(_check_rate("p", p), _check_count("until", until), mode)


_UNITS = ("step", "epoch")
_LATE_DEFAULT = {"step": 1000, "epoch": 10}


class DropoutScheduler:
    r"""Drive the dropout rates of a model with schedules, per step or per epoch.

    Args:
        model: the model whose dropout sites are driven: droplab modules and ``torch.nn`` dropout
            modules (``Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``, ...).
        schedule: one schedule for every site, or ``{pattern: schedule}`` for named groups (patterns
            as :func:`droplab.set_rate`: a module path or prefix, a glob, a regex; the last match
            wins; sites no pattern matches keep their rate). Learned rates
            (:class:`droplab.nn.ConcreteDropout`) are driven only by a pattern that names them. The
            ``dropout=`` arguments of ``torch.nn.RNN``/``LSTM``/``GRU``/``MultiheadAttention`` are not
            modules with a rate ``p`` and are not driven: convert those layers to droplab's first.
        unit: ``"step"`` or ``"epoch"``: what one :meth:`step` call counts; it only sets the
            default of ``late_after`` and is recorded in the state. Default: ``"step"``.
        max_jump: the largest rise of a site's rate in one :meth:`step` not warned about. Default: 0.1.
        late_after: from which count ``t`` a rise counts as late. Default: 1000 steps or 10 epochs.
        resolution: round every rate to a multiple of this (e.g. 0.01), bounding the distinct rates
            a compiled model sees. Default: None (no rounding).

    The schedule's value at ``t = 0`` is applied at construction; each :meth:`step` advances ``t`` by
    one and applies the value at the new ``t``. A rate change takes effect at the next forward.

    Abrupt-rise rule: a ``UserWarning`` is issued (once per site) when one :meth:`step` takes the
    count to ``t >= late_after`` and raises a site's rate by more than ``max_jump``, i.e.
    ``schedule(t) - schedule(t - 1) > max_jump``. Raising the rate suddenly after the weights have
    adapted to less noise disrupts what was learned (training loss jumps); ramp it instead.

    .. warning::
        Under ``torch.compile`` the rate is a Python float that Dynamo guards on: every new value
        recompiles the graph, and past Dynamo's recompile limit (8 by default) the model runs eagerly.
        For schedules that change every step, use ``resolution`` or step per epoch.

    Example::

        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0))
        >>> sched = DropoutScheduler(model, linear(0.0, 0.5, steps=10))
        >>> for _ in range(5):
        ...     rates = sched.step()
        >>> model[1].p
        0.25
    """

    def __init__(self, model: nn.Module, schedule: Callable[[int], float] | Mapping[str, Callable[[int], float]],
                 unit: str = "step", *, max_jump: float = 0.1, late_after: int | None = None,
                 resolution: float | None = None) -> None:
        if unit not in _UNITS:
            raise ValueError(f"unit must be one of {_UNITS}, but got {unit!r}")
        rules = list(schedule.items()) if isinstance(schedule, Mapping) else [("*", schedule)]
        for pattern, fn in rules:
            if not callable(fn):
                raise TypeError(f"the schedule for {pattern!r} must be callable t -> rate, but got {type(fn).__name__}")
        if isinstance(max_jump, bool) or not isinstance(max_jump, (int, float)) or not 0 <= max_jump <= 1:
            raise ValueError(f"max_jump must be a number in [0, 1], but got {max_jump!r}")
        late_after = _LATE_DEFAULT[unit] if late_after is None else _check_count("late_after", late_after, 0)
        if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, (int, float))
                                       or not 0 < resolution <= 1):
            raise ValueError(f"resolution must be a number in (0, 1] or None, but got {resolution!r}")
        self.unit, self.max_jump, self.late_after, self.resolution = unit, float(max_jump), late_after, resolution
        self._targets = match_sites(model, rules, what="DropoutScheduler")
        self._warned: set[str] = set()
        self.t = 0
        self._apply(self.rates(0))

    @property
    def site_names(self) -> list[str]:
        """The names of the driven sites."""
        return [name for name, _, _ in self._targets]

    def rates(self, t: int | None = None) -> dict[str, float]:
        """The rate of every driven site at count ``t`` (default: now), validated, without applying it."""
        t = self.t if t is None else _check_t(t)
        out = {}
        for name, module, fn in self._targets:
            p = float(fn(t))
            if self.resolution is not None:
                p = min(max(round(p / self.resolution) * self.resolution, 0.0), 1.0)
            out[name] = getattr(module, "check_rate", check_probability)(p)
        return out

    def _apply(self, rates: dict[str, float]) -> None:
        for name, module, _ in self._targets:
            module.p = rates[name]
            mark_rate_set(module)  # a routed functional call's own p no longer decides

    def step(self) -> dict[str, float]:
        """Advance the count by one (a step or an epoch) and apply the rates there; returns them."""
        previous = self.rates(self.t)
        new = self.rates(self.t + 1)  # computed and validated before anything changes
        self.t += 1
        if self.t >= self.late_after:
            jumps = {name: (previous[name], new[name]) for name in new
                     if new[name] - previous[name] > self.max_jump and name not in self._warned}
            if jumps:
                self._warned.update(jumps)
                detail = ", ".join(f"{name or '<model>'}: {a:.3g} -> {b:.3g}" for name, (a, b) in jumps.items())
                warnings.warn(f"dropout rate raised abruptly late in training ({self.unit} {self.t}): {detail}; "
                              f"a rise of more than {self.max_jump} in one {self.unit} disrupts what the network "
                              "has learned, ramp it over several steps instead", UserWarning, stacklevel=2)
        self._apply(new)
        return new

    def state_dict(self) -> dict[str, object]:
        """The count, the unit and the rates now (the schedules themselves are code, rebuilt by the caller)."""
        return {"t": self.t, "unit": self.unit, "rates": self.rates()}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Resume at the saved count: the next :meth:`step` continues the saved run's sequence."""
        if state.get("unit") != self.unit:
            raise ValueError(f"the state was saved with unit={state.get('unit')!r}, but this scheduler counts "
                             f"{self.unit!r}")
        t = _check_t(state["t"])
        saved = state.get("rates", {})
        unknown = sorted(set(saved) - set(self.site_names))
        if unknown:
            raise ValueError(f"the state has rates for sites this scheduler does not drive: {unknown}")
        rates = self.rates(t)
        differing = [name for name, p in saved.items() if abs(float(p) - rates[name]) > 1e-12]
        if differing:
            warnings.warn(f"the schedules give other rates at {self.unit} {t} than the saved run had, for "
                          f"{differing}: the resumed sequence follows this scheduler's schedules", UserWarning,
                          stacklevel=2)
        self.t = t
        self._apply(rates)

    def __repr__(self) -> str:
        groups = ", ".join(f"{name or '<model>'}: {fn!r}" for name, _, fn in self._targets)
        return f"DropoutScheduler(unit={self.unit!r}, t={self.t}, sites={{{groups}}})"
