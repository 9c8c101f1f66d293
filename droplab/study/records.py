"""The records a study run fills: a unit of work, one claim's results, the whole study."""

from __future__ import annotations

from dataclasses import dataclass, field

from .claim import Claim
from .plan import Tier

__all__ = ["Unit", "ClaimResult", "Study"]


@dataclass(frozen=True)
class Unit:
    """One training: an arm of a claim (``kind="arm"``) or a baseline run (``kind="baseline"``)."""

    kind: str
    name: str  #: the claim's name (``01-overfitting``) or the baseline's
    seed: int
    phase: str  #: ``baseline``, ``tune`` or ``confirm``
    tier: str
    arm: str = ""
    candidate: int = 0


@dataclass
class ClaimResult:
    """Everything measured for one claim (see the module docstring for the phases)."""

    claim: Claim
    settings: dict
    tuning: dict = field(default_factory=dict)  #: arm -> candidate index -> list of validation scores
    chosen: dict = field(default_factory=dict)  #: arm -> chosen candidate index
    pilot: dict = field(default_factory=dict)  #: effect -> {"values", "sd", "n_required"}
    n_required: int | None = None
    seeds: list[int] = field(default_factory=list)
    raws: dict = field(default_factory=dict)  #: seed -> arm -> raw
    raws_tune: dict = field(default_factory=dict)  #: (arm, candidate, tuning seed) -> raw
    unit_cpu: dict = field(default_factory=dict)  #: (arm, candidate, tuning seed) -> CPU seconds
    cpu_per_seed: float = 0.0  #: the chosen candidates' CPU seconds per seed (the budget's estimate)
    per_seed: list[dict] = field(default_factory=list)  #: one effects dict per confirmatory seed
    checks: dict = field(default_factory=dict)  #: name -> {"passed", "detail"}
    effects: dict = field(default_factory=dict)  #: effect key -> statistics and verdict
    withheld: str | None = None
    wall: float = 0.0
    cpu: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        return self.errors[0] if self.errors else None

    def candidate(self, arm: str) -> dict:
        return dict(self.claim.arm(arm).candidates[self.chosen.get(arm, 0)])

    def epochs(self) -> dict:
        """Per arm: the epochs each confirmatory seed ran, its best epoch, and how many hit the epoch cap."""
        out = {}
        for arm in self.claim.arms:
            rows = [self.raws[seed][arm.name] for seed in self.seeds if arm.name in self.raws.get(seed, {})]
            run = [r["epochs_run"] for r in rows if "epochs_run" in r]
            if run:
                out[arm.name] = {"epochs_run": run, "best_epoch": [r.get("best_epoch") for r in rows],
                                 "censored": sum(bool(r.get("censored")) for r in rows)}
        return out


@dataclass
class Study:
    """A study run: its id, tier, the baselines, the claims' results, and the adjustment across them."""

    id: str
    tier: Tier
    adjust: str
    results: list[ClaimResult]
    baselines: dict = field(default_factory=dict)  #: name -> judged summary (:func:`.baselines.judge_baselines`)
    meta: dict = field(default_factory=dict)
    family: int = 0  #: primary effects adjusted together
