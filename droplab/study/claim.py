"""What a claim is: the source's statement split into parts, the arms trained per seed, and the effects judged.

A claim module in :mod:`droplab.study.claims` defines ``CLAIM = Claim(...)``:

* the **source** (citation), its **statement** as the source makes it, the **regime** in which the effect can
  show (and how the setup puts the experiment there) and the **mechanism** measured beside the outcome;
* the **parts** of a multi-part claim, each judged on its own primary effects;
* the **arms**: conditions trained once per seed, each with the hyper-parameter **candidates** tuned on the
  tuning seeds (the first candidate is the default, used by ``--quick``). ``run(settings, arm, seed, hp)``
  trains one arm and returns a JSON-serializable ``raw`` dict holding ``val_score`` (higher is better: the
  tuning criterion) and what ``measure`` needs;
* ``measure(raws, settings)`` maps one seed's raws (by arm name) to the effects (and mechanism measures);
* **effects**: each with the predicted direction, its smallest effect of interest (SESOI) and the reason
  for it; ``kind="equivalence"`` for claims of no difference (the SESOI is then the margin);
* **checks**: ``checks(raws_by_seed, settings)`` returns ``{name: (passed, detail)}``, the conditions the
  experiment must meet to test the claim at all (the regime is reached, a constraint binds); a failed check
  withholds the claim's verdicts, as a failed baseline does (``baselines`` names the ones it relies on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Effect", "Part", "Arm", "Claim", "TIERS"]

TIERS = ("quick", "default", "confirm")
KINDS = ("difference", "equivalence")


@dataclass(frozen=True)
class Effect:
    """One measured difference: ``key`` in the measure dict, what it is, the sign the source predicts.

    ``sesoi`` is the smallest effect of interest in the effect's units (for ``kind="equivalence"``, the
    margin within which the arms count as equal), with ``reason`` saying why. ``primary`` effects are judged
    and adjusted across the study; the others (mechanisms, secondary outcomes) are reported with their
    unadjusted intervals. ``part`` names the claim part the effect decides.
    """

    key: str
    label: str
    direction: int
    sesoi: float
    reason: str
    kind: str = "difference"
    primary: bool = True
    part: str = "a"

    def __post_init__(self) -> None:
        if self.direction not in (1, -1):
            raise ValueError(f"Effect {self.key!r}: direction must be +1 or -1, but got {self.direction!r}")
        if self.kind not in KINDS:
            raise ValueError(f"Effect {self.key!r}: kind must be one of {', '.join(KINDS)}, but got {self.kind!r}")
        if not self.sesoi > 0:
            raise ValueError(f"Effect {self.key!r}: sesoi must be positive, but got {self.sesoi!r}")
        if not self.reason:
            raise ValueError(f"Effect {self.key!r}: give the reason for the smallest effect of interest")


@dataclass(frozen=True)
class Part:
    """One separately judged part of a claim: its key (``"a"``) and the statement it tests."""

    key: str
    statement: str


@dataclass(frozen=True)
class Arm:
    """A condition trained once per seed; ``candidates`` are the hyper-parameters tuned for it (first: default)."""

    name: str
    candidates: tuple[dict, ...] = field(default_factory=lambda: ({},))

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError(f"arm {self.name!r} needs at least one candidate")


@dataclass(frozen=True)
class Claim:
    """A claim about dropout and the experiment that tests it (see the module docstring)."""

    number: int
    key: str
    title: str
    source: str
    statement: str
    regime: str
    mechanism: str
    setup_text: str
    parts: tuple[Part, ...]
    arms: tuple[Arm, ...]
    effects: tuple[Effect, ...]
    settings: Callable[[str], dict]
    run: Callable[[dict, str, int, dict], dict]
    measure: Callable[[dict, dict], dict]
    checks: Callable[[list, dict], dict] | None = None
    plot: Callable | None = None
    baselines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not any(effect.primary for effect in self.effects):
            raise ValueError(f"claim {self.key!r} needs at least one primary effect")
        parts = {part.key for part in self.parts}
        for effect in self.effects:
            if effect.part not in parts:
                raise ValueError(f"claim {self.key!r}: effect {effect.key!r} names part {effect.part!r}, "
                                 f"but the parts are {sorted(parts)}")
        for part in self.parts:
            if not any(e.primary and e.part == part.key for e in self.effects):
                raise ValueError(f"claim {self.key!r}: part {part.key!r} has no primary effect to judge it")
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"claim {self.key!r}: arm names must be unique and at least one, got {names}")

    @property
    def name(self) -> str:
        return f"{self.number:02d}-{self.key}"

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(f"claim {self.name} has no arm {name!r}")

    def describe(self) -> dict:
        """The claim's text and design, as stored in ``results.json``."""
        return {"number": self.number, "key": self.key, "title": self.title, "source": self.source,
                "statement": self.statement, "regime": self.regime, "mechanism": self.mechanism,
                "setup": self.setup_text, "baselines": list(self.baselines),
                "parts": [{"key": p.key, "statement": p.statement} for p in self.parts],
                "arms": [{"name": a.name, "candidates": list(a.candidates)} for a in self.arms],
                "effects": [{"key": e.key, "label": e.label, "direction": e.direction, "sesoi": e.sesoi,
                             "reason": e.reason, "kind": e.kind, "primary": e.primary, "part": e.part}
                            for e in self.effects]}
