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
* Monte-Carlo sampling (:mod:`droplab.mc`): inside :func:`mc_sampling` a module draws sample ``t``'s
  mask with ``seed = mc_seed(module seed, MC seed, input batch)`` and ``step = t``, and its training
  step does not advance. The input may stack several samples along the batch axis, sample-major;
  :meth:`StochasticModule.mc_forward` then runs the forward once per sample slice (or once per row of
  each slice for consistent masks), so a batched pass equals the loop over samples, mask for mask.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._fx import fx_leaf_forward
from .._modes import training_flags_restored
from ..functional import check_probability, check_scaling, fresh_key, seed_tensor
from ..rng import philox4x32_scalar, split_seed

__all__ = ["StochasticModule", "current_replica", "in_recomputation", "MCSampling", "mc_sampling", "mc_seed",
           "mc_activate", "MCBatchingError"]

_COUNTERS = ("seed", "step")


def current_replica() -> int:
    """The data-parallel rank of this process (0 outside ``torch.distributed``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


@dataclass(frozen=True)
class MCSampling:
    """What a Monte-Carlo pass draws: samples ``first .. first + count - 1`` of MC seed ``seed``.

    The input of every site stacks ``count`` samples along its batch axis, sample-major. ``batch``
    numbers the input batch (folded into the seed so that different input batches get independent
    masks); ``consistent`` draws each row's mask as if it were a batch of one, so sample ``t`` uses
    the same masks for every input and every batch (``batch`` is then ignored).
    """

    seed: int
    first: int = 0
    count: int = 1
    batch: int = 0
    consistent: bool = False


class MCBatchingError(RuntimeError):
    """A site cannot draw several stacked samples (or per-row masks) in one pass; sample it in a loop."""


_MC = threading.local()  # .spec: the active MCSampling; .sample: the sample index being drawn
_MC_WORD = 0x4D43  # "MC": keeps MC seeds apart from any other use of the fold


def mc_seed(site_seed: int, seed: int, batch: int = 0) -> int:
    """The seed a site with ``site_seed`` uses in MC pass ``seed`` on input batch ``batch``.

    One Philox4x32-10 block keyed by the site's seed, counter ``(seed lo, seed hi, batch, 0x4D43)``;
    the first two output words form the 64-bit result (low word first).
    """
    s = int(seed) % 2**64
    w = philox4x32_scalar((s & 0xFFFFFFFF, s >> 32, int(batch), _MC_WORD), split_seed(int(site_seed)))
    return w[0] | (w[1] << 32)


@contextlib.contextmanager
def mc_sampling(spec: MCSampling) -> Iterator[None]:
    """Inside the block, activated sites (:func:`mc_activate`) draw the samples ``spec`` names."""
    previous = getattr(_MC, "spec", None)
    _MC.spec = spec
    try:
        yield
    finally:
        _MC.spec = previous


@contextlib.contextmanager
def mc_activate(modules: Iterable[StochasticModule]) -> Iterator[None]:
    """Make ``modules`` stochastic and route their forward through :meth:`StochasticModule.mc_forward`.

    Training flags and forwards are restored on exit, also after an error. Outside :func:`mc_sampling`
    an activated module behaves as in training.
    """
    modules = list(dict.fromkeys(modules))
    with training_flags_restored(dict.fromkeys(sub for m in modules for sub in m.modules())):
        try:
            for module in modules:
                module.train()
                module.forward = module.mc_forward  # an instance attribute: the class stays untouched
            yield
        finally:
            for module in modules:
                module.__dict__.pop("forward", None)


def _axis(value: torch.Tensor, dim: int, size: int) -> int | None:
    """The batch axis of ``value``: ``dim`` if it has ``size`` rows there, else the first axis that does.

    The fallback serves sites whose arguments or outputs put the batch elsewhere, e.g. the ``(L, N, H)``
    state of a batch-first RNN.
    """
    if value.dim() > dim and value.shape[dim] == size:
        return dim
    return next((axis for axis, n in enumerate(value.shape) if n == size), None)


def _narrow(value, dim: int, rows: int, start: int, length: int):
    if isinstance(value, torch.Tensor):
        axis = _axis(value, dim, rows)
        return value if axis is None else value.narrow(axis, start, length)
    if isinstance(value, (tuple, list)):
        return type(value)(_narrow(v, dim, rows, start, length) for v in value)
    return value


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


def in_recomputation() -> bool:
    """True while autograd's engine runs a forward again inside backward (activation checkpointing)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


class StochasticModule(nn.Module):
    """Base of droplab's dropout modules: validation, the seed mode, counters, replica folding and ``extra_repr``.

    Subclasses pass their functional op to :meth:`_call_functional` (or call :meth:`_next_counter`
    once per stochastic forward and pass the returned ``(seed, step)`` tensors to a functional op).
    Every subclass's ``forward`` is recorded by ``torch.fx`` tracers as one ``call_module`` node.
    """

    _replay_depth = 64  # counters remembered for checkpoint recomputation

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:  # a leaf for torch.fx: the mask is drawn at run time, not trace time
            cls.forward = fx_leaf_forward(cls.__dict__["forward"])

    @property
    def mc_batch_dim(self) -> int:
        """The batch axis of this module's input and output under MC sampling.

        0, or 1 for a sequence site whose ``batch_first`` attribute is False (``(T, N, *)`` inputs).
        """
        return 0 if getattr(self, "batch_first", True) else 1

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

    def _mc_site_seed(self) -> int:
        # an unseeded module has no seed of its own: MC sampling may name one (``_mc_seed``), else 0
        return int(self.seed) if self.seeded else int(self.__dict__.get("_mc_seed", 0))

    def _next_counter(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(seed, step)`` for this stochastic forward, read once as values.

        Seeded: the current step, which then advances. Unseeded: a fresh key from torch's default
        CPU generator and step 0. A recomputed forward (checkpointing) replays what its original
        forward took. Under MC sampling it returns the sample's counters and advances nothing.
        """
        spec = getattr(_MC, "spec", None)
        if spec is not None:
            sample = getattr(_MC, "sample", None)
            if sample is None:  # a mask drawn outside forward (e.g. a recurrent mask drawn by its owner)
                if spec.count != 1 or spec.consistent:
                    raise MCBatchingError(f"{type(self).__name__} draws a mask outside its forward, so MC "
                                          "sampling cannot split stacked samples or rows for it")
                sample = spec.first
            seed = mc_seed(self._mc_site_seed(), spec.seed, 0 if spec.consistent else spec.batch)
            return (torch.tensor(seed - 2**64 if seed >= 2**63 else seed, dtype=torch.int64),
                    torch.tensor(sample, dtype=torch.int64))
        if self._issued and in_recomputation():
            return self._issued.pop()
        if self.seeded:
            # the step tensor this forward read is never written again: the buffer is rebound to a new
            # tensor, so whatever re-reads the value later (inductor's backward, a compiled checkpoint's
            # recomputation) gets this forward's step, never the next one
            step = self.step
            self.step = step + 1
            counters = (self.seed, step)
        else:
            counters = (fresh_key(), torch.zeros((), dtype=torch.int64))
        if not torch.compiler.is_compiling():
            self._issued.append(counters)
        return counters

    def mc_forward(self, *args, **kwargs):
        """The forward under MC sampling: one call per stacked sample, each with ``step = t``.

        The input holds ``spec.count`` samples along :attr:`mc_batch_dim`, sample-major; every tensor
        argument with that many rows is sliced, and the slices' outputs are concatenated back. With
        consistent masks each row is run on its own (a batch of one), so its mask cannot depend on its
        position in the batch. Variants need no code of their own; one whose input or output has no
        batch axis of that size overrides this method.
        """
        forward = type(self).forward
        spec = getattr(_MC, "spec", None)
        if spec is None or getattr(_MC, "sample", None) is not None:
            # outside a sampling block, or nested inside a site that is already drawing a slice
            return forward(self, *args, **kwargs)
        dim = self.mc_batch_dim
        rows = _batch_rows(args, dim)
        if rows < 0 or rows % spec.count:
            raise ValueError(f"{type(self).__name__} under MC sampling expects {spec.count} stacked samples along "
                             f"dimension {dim}, but its input has {rows} rows there")
        per_sample = rows // spec.count
        outputs = []
        try:
            for j in range(spec.count):
                _MC.sample = spec.first + j
                starts = range(j * per_sample, (j + 1) * per_sample) if spec.consistent else [j * per_sample]
                length = 1 if spec.consistent else per_sample
                outputs += [forward(self, *_narrow(args, dim, rows, start, length),
                                    **{k: _narrow(v, dim, rows, start, length) for k, v in kwargs.items()})
                            for start in starts]
        finally:
            _MC.sample = None
        return outputs[0] if len(outputs) == 1 else _cat(outputs, dim, length)

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
