"""What a claim is: its text, its expected effects, and four functions (setup, run, measure, plot).

A claim module in :mod:`droplab.study.claims` defines ``CLAIM = Claim(...)``. The runner calls
``settings = claim.setup(quick)``, then per seed ``raw = claim.run(settings, seed)`` and
``effects = claim.measure(raw, settings)``; the verdict of each :class:`Effect` comes from the Student-t interval
of its per-seed values (:mod:`droplab.study.stats`), and ``claim.plot(ax, raws, settings)`` draws the
claim's figure. ``raw`` must be JSON-serializable: it is stored in the run store as the seed's row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Effect", "Claim"]


@dataclass(frozen=True)
class Effect:
    """One measured difference: ``key`` in the measure dict, what it is, and the sign the claim predicts.

    ``primary`` effects decide the claim's verdict; the others are reported with their own verdicts.
    """

    key: str
    label: str
    direction: int
    primary: bool = True

    def __post_init__(self) -> None:
        if self.direction not in (1, -1):
            raise ValueError(f"Effect {self.key!r}: direction must be +1 or -1, but got {self.direction!r}")


@dataclass(frozen=True)
class Claim:
    """A claim about dropout and the experiment that tests it (see the module docstring)."""

    number: int
    key: str
    title: str
    setup_text: str
    expected: str
    source: str
    effects: tuple[Effect, ...]
    seeds: int
    setup: Callable[[bool], dict]
    run: Callable[[dict, int], dict]
    measure: Callable[[dict, dict], dict]
    plot: Callable | None = None

    def __post_init__(self) -> None:
        if not any(effect.primary for effect in self.effects):
            raise ValueError(f"claim {self.key!r} needs at least one primary effect")
        if self.seeds < 3:
            raise ValueError(f"claim {self.key!r}: default seeds must be at least 3, but got {self.seeds}")

    @property
    def name(self) -> str:
        return f"{self.number:02d}-{self.key}"
