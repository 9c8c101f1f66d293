"""What every droplab dropout module shares: a rate, the seed mode, the step counter and the replica rule.

A module holds hyper-parameters (and, when seeded, its counters); the math lives in :mod:`droplab.functional`.

* Two seed modes. ``seed=None`` (the default) behaves as ``torch.nn`` does where a torch user can
  observe it: no counters (the ``state_dict`` is torch's), nothing drawn at construction, and a fresh
  64-bit key drawn from torch's default CPU generator at each training forward, so
  ``torch.manual_seed`` and ``freeze_rng_state`` replay the mask. ``seed=int`` keeps ``seed`` and
  ``step`` as int64 buffers in ``state_dict`` (a resumed run draws exactly the masks it would have);
  they advance inside a ``torch.compile``'d graph without recompiling, and stay on the CPU whatever
  device the module moves to (they are counters: reading them must not synchronize an accelerator).
  An unseeded module that loads a ``state_dict`` holding ``seed``/``step`` (a checkpoint written by
  droplab 0.1, or by a seeded module) becomes seeded with them.
* Each training forward reads its counters once, as values: a seeded module takes the current step
  and advances it; the value, not the buffer, reaches backward, so backward regenerates this forward's
  mask under every ``torch.compile`` backend. A forward that is *recomputed* during backward
  (``torch.utils.checkpoint``) replays the counters its original forward took, so it reproduces the
  same mask. Replay is newest first, which is exact when a module runs once per checkpointed region
  (regions are recomputed in reverse order); a module called several times inside one checkpointed
  region would replay its steps in the wrong order, so give each call its own module.
* Under ``torch.distributed`` the rank is folded into the counter so replicas draw different masks,
  unless ``share_across_ranks=True``.
* Counters from outside. A module's :attr:`StochasticModule.counter_source` (``None`` by default) is
  a callable ``source(module) -> (seed, step) | None``: while it returns counters, the forward draws
  with them and the module's own counters do not advance. :mod:`droplab.mc` sets it on the modules
  it samples, for the duration of a Monte-Carlo pass; the base knows nothing else of MC.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .._fx import fx_leaf_forward
from ..functional import check_probability, check_scaling, fresh_key, seed_tensor

__all__ = ["StochasticModule", "CounterSource", "current_replica", "in_recomputation"]

_COUNTERS = ("seed", "step")


_UNKNOWN = object()  # another torch's c10d: ask its public API

try:  # c10d's registry of the default process group: read directly, it is consulted at every forward
    from torch.distributed.distributed_c10d import _world as _c10d_world
except ImportError:  # pragma: no cover - torch built without distributed
    _c10d_world = None


def current_replica() -> int:
    """The data-parallel rank of this process (0 outside ``torch.distributed``)."""
    if _c10d_world is not None and getattr(_c10d_world, "_default_pg", _UNKNOWN) is None:
        return 0  # no default process group: the common case, answered without a call into c10d
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


CounterSource = Callable[["StochasticModule"], "tuple[torch.Tensor, torch.Tensor] | None"]


def in_recomputation() -> bool:
    """True while autograd's engine runs a forward again inside backward (activation checkpointing)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


def _counter_views(seed: torch.Tensor, step: torch.Tensor) -> tuple:
    """``(seed, its address, a numpy view of it, step, its address, a numpy view of it)``.

    A numpy view reads a 0-dim CPU counter without a tensor op (``int(tensor)`` costs a dispatch) and sees
    every write to its memory, ``.data`` writes included; a new storage (``.data = t``, a new buffer) has
    a new address, and the views are made again.
    """
    return (seed, seed.data_ptr(), seed.detach().numpy(), step, step.data_ptr(), step.detach().numpy())


class StochasticModule(nn.Module):
    """Base of droplab's dropout modules: validation, the seed mode, counters, replica folding and ``extra_repr``.

    Subclasses pass their functional op to :meth:`_call_functional` (or call :meth:`_next_counter`
    once per stochastic forward and pass the returned ``(seed, step)`` tensors to a functional op).
    Every subclass's ``forward`` is recorded by ``torch.fx`` tracers as one ``call_module`` node.
    """

    _replay_depth = 64  # counters remembered for checkpoint recomputation
    #: ``source(module) -> (seed, step) | None``: counters supplied from outside (Monte-Carlo sampling
    #: sets it on the modules it samples); while it returns counters, the module's own do not advance
    counter_source: CounterSource | None = None
    _counter_views: tuple | None = None  # the eager path's reading glasses on the counters (see _counter_views)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        forward = cls.__dict__.get("forward")
        # a leaf for torch.fx: the mask is drawn at run time, not trace time (unless forward checks itself)
        if forward is not None and not getattr(forward, "checks_fx_itself", False):
            cls.forward = fx_leaf_forward(forward)

    def __init__(self, p: float = 0.5, *, seed: int | None = None, scaling: str = "inverted",
                 share_across_ranks: bool = False) -> None:
        super().__init__()
        self.p = p
        self.scaling = check_scaling(scaling)
        self.share_across_ranks = bool(share_across_ranks)
        self._issued: collections.deque[tuple[torch.Tensor, torch.Tensor]] = collections.deque(
            maxlen=self._replay_depth)
        # unseeded: plain ``None`` attributes, no buffers, so the state_dict is torch's
        self.seed: torch.Tensor | None = None
        self.step: torch.Tensor | None = None
        if seed is not None:
            self._become_seeded(seed_tensor(seed), torch.zeros((), dtype=torch.int64))

    @property
    def seeded(self) -> bool:
        """True when the module keeps ``seed``/``step`` counters (constructed with ``seed=int``)."""
        return "seed" in self._buffers

    def _become_seeded(self, seed: torch.Tensor, step: torch.Tensor) -> None:
        for name, value in (("seed", seed), ("step", step)):
            self.__dict__.pop(name, None)
            self.register_buffer(name, value.detach().to("cpu", torch.int64).reshape(()).clone())
        self._issued.clear()

    # the rate is validated on every assignment, so schedules and set_rate cannot store a bad value
    @property
    def p(self) -> float:
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = check_probability(value)

    @property
    def replica(self) -> int:
        return 0 if self.share_across_ranks else current_replica()

    def _call_functional(self, fn, input: torch.Tensor, *args, **kwargs):
        """``fn(input, p, training, *args, **kwargs)``: the forward every simple module shares.

        In evaluation mode, or at ``p = 0``, ``fn`` gets ``training=False`` (its inference rule) and
        no counters are drawn; otherwise it gets ``training=True`` and this forward's ``seed``,
        ``step`` and ``replica`` keywords.
        """
        if not self.training or self.p == 0.0:
            return fn(input, self.p, False, *args, **kwargs)
        seed, step = self._next_counter()
        return fn(input, self.p, True, *args, seed=seed, step=step, replica=self.replica, **kwargs)

    def _next_counter(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(seed, step)`` for this stochastic forward, read once as values.

        Seeded: the current step, which then advances. Unseeded: a fresh key from torch's default
        CPU generator and step 0. A recomputed forward (checkpointing) replays what its original
        forward took. A :attr:`counter_source` (MC sampling) may supply them instead; nothing advances then.
        """
        if self.counter_source is not None:
            counters = self.counter_source(self)
            if counters is not None:
                return counters
        if self._issued and in_recomputation():
            return self._issued.pop()
        if self.seeded and torch.compiler.is_compiling():
            # compiled: the step tensor this forward read is never written again, the buffer is rebound
            # to a new tensor, so whatever re-reads the value later (inductor's backward, a compiled
            # checkpoint's recomputation) gets this forward's step, never the next one
            step = self.step
            self.step = step + 1
            counters = (self.seed, step)
        elif self.seeded:
            # eager: a copy carries the value; the buffer keeps its identity (DDP, hooks hold references)
            counters = (self.seed, self.step.clone())
            self.step.add_(1)
        else:
            counters = (fresh_key(), torch.zeros((), dtype=torch.int64))
        if not torch.compiler.is_compiling():
            self._issued.append(counters)
        return counters

    def _eager_counters(self) -> tuple[int, int]:
        """:meth:`_next_counter` for the eager path (never under compile): ``(seed, step)`` as Python ints.

        The same rules, read without tensor round trips: a :attr:`counter_source`, then replay during
        recomputation, then the module's own counters (seeded: the step, which advances; unseeded: a fresh
        key from torch's default generator, step 0). What it issues is remembered for replay, the step as an int.
        """
        if self.counter_source is not None:
            counters = self.counter_source(self)
            if counters is not None:
                return int(counters[0]), int(counters[1])
        issued = self._issued
        if issued and torch._C._current_graph_task_id() != -1:
            seed, step = issued.pop()
            return int(seed), int(step)
        seed = self._buffers.get("seed")
        if seed is not None:
            step_buffer = self._buffers["step"]
            views = self._counter_views
            if (views is None or views[0] is not seed or views[1] != seed.data_ptr()
                    or views[3] is not step_buffer or views[4] != step_buffer.data_ptr()):
                views = self._counter_views = _counter_views(seed, step_buffer)
            key, step = int(views[2]), int(views[5])
            step_buffer.add_(1)
            issued.append((seed, step))
            return key, step
        key = fresh_key()
        issued.append((key, 0))
        return int(key), 0

    def reseed(self, seed: int, step: int = 0) -> None:
        """Seed the module in place (an unseeded module becomes seeded), e.g. to make two modules draw
        the same masks."""
        self._become_seeded(seed_tensor(seed), torch.tensor(int(step), dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # a checkpoint with counters (droplab 0.1, or a seeded module) seeds an unseeded module
        seed, step = state_dict.get(prefix + "seed"), state_dict.get(prefix + "step")
        if not self.seeded and isinstance(seed, torch.Tensor) and isinstance(step, torch.Tensor):
            self._become_seeded(seed, step)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_counter_views", None)  # views of this object's memory: a copy makes its own
        return state

    def _apply(self, fn, recurse=True):
        # the counters stay on the CPU as int64, whatever device or dtype the module moves to
        counters = {name: self._buffers[name] for name in _COUNTERS if name in self._buffers}
        result = super()._apply(fn, recurse)
        self._buffers.update(counters)
        return result

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self._repr_fields())

    def _repr_fields(self) -> Sequence[tuple[str, object]]:
        fields = [("p", self.p)]
        fields += self._extra_fields()
        if self.seeded:  # shown only when given, so an unseeded module prints as torch's does
            fields.append(("seed", int(self.seed) % 2**64))
        fields.append(("scaling", self.scaling))
        if self.share_across_ranks:
            fields.append(("share_across_ranks", True))
        return fields

    def _extra_fields(self) -> list[tuple[str, object]]:
        return []
