"""What every droplab dropout module shares: a rate, a seed, a step counter and the replica rule.

A module holds hyper-parameters and its counters; the math lives in :mod:`droplab.functional`.

* ``seed`` and ``step`` are int64 buffers, so they live in ``state_dict`` (a resumed run draws
  exactly the masks it would have) and advance inside a ``torch.compile``'d graph without
  recompiling. They stay on the CPU whatever device the module moves to: they are counters, and
  reading them must not synchronize an accelerator.
* Each training forward takes the current step and advances it. A forward that is *recomputed*
  during backward (``torch.utils.checkpoint``) replays the step its original forward took, so it
  reproduces the same mask.
* Under ``torch.distributed`` the rank is folded into the counter so replicas draw different masks,
  unless ``share_across_ranks=True``.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import torch
from torch import nn

from ..functional import check_probability, check_scaling, new_seed

__all__ = ["StochasticModule", "current_replica", "in_recomputation"]

_COUNTERS = ("seed", "step")


def current_replica() -> int:
    """The data-parallel rank of this process (0 outside ``torch.distributed``)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def in_recomputation() -> bool:
    """True while autograd's engine runs a forward again inside backward (activation checkpointing)."""
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


class StochasticModule(nn.Module):
    """Base of droplab's dropout modules: validation, counters, replica folding and ``extra_repr``.

    Subclasses call :meth:`_next_counter` once per stochastic forward and pass the returned
    ``(seed, step)`` tensors to a functional op.
    """

    _replay_depth = 64  # steps remembered for checkpoint recomputation

    def __init__(self, p: float = 0.5, *, seed: int | None = None, scaling: str = "inverted",
                 share_across_ranks: bool = False) -> None:
        super().__init__()
        self.p = p
        self.scaling = check_scaling(scaling)
        self.share_across_ranks = bool(share_across_ranks)
        if seed is None:
            seed = new_seed()
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, but got {type(seed).__name__}")
        s = seed % 2**64
        self.register_buffer("seed", torch.tensor(s - 2**64 if s >= 2**63 else s, dtype=torch.int64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self._issued: collections.deque[torch.Tensor] = collections.deque(maxlen=self._replay_depth)

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

    def _next_counter(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(seed, step)`` for this stochastic forward; advances the step, or replays it when recomputed."""
        if self._issued and in_recomputation():
            return self.seed, self._issued.pop()
        step = self.step.clone()
        self.step.add_(1)
        if not torch.compiler.is_compiling():
            self._issued.append(step)
        return self.seed, step

    def reseed(self, seed: int, step: int = 0) -> None:
        """Set the seed (and step) in place, e.g. to make two modules draw the same masks."""
        s = int(seed) % 2**64
        self.seed.fill_(s - 2**64 if s >= 2**63 else s)
        self.step.fill_(int(step))
        self._issued.clear()

    def _apply(self, fn, recurse=True):
        # the counters stay on the CPU as int64, whatever device or dtype the module moves to
        counters = {name: getattr(self, name) for name in _COUNTERS}
        result = super()._apply(fn, recurse)
        for name, value in counters.items():
            self._buffers[name] = value
        return result

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value!r}" for name, value in self._repr_fields())

    def _repr_fields(self) -> Sequence[tuple[str, object]]:
        fields = [("p", self.p)]
        fields += self._extra_fields()
        fields += [("seed", int(self.seed) % 2**64), ("scaling", self.scaling)]
        if self.share_across_ranks:
            fields.append(("share_across_ranks", True))
        return fields

    def _extra_fields(self) -> list[tuple[str, object]]:
        return []
