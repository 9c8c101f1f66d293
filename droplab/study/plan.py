"""The study's tiers, seeds and time budget.

Three tiers, each with a budget in minutes of wall time on an idle 2-core machine (the time it prints first):

* ``quick``: a smoke test, one seed, each arm's default hyper-parameters, shortened training; nothing judged.
* ``default``: every arm tuned on one tuning seed, three confirmatory seeds, verdicts with the power those
  seeds have (most small effects come out "underpowered", with their minimum detectable effect and the seed
  count their spread asks for). One tuning seed is no pilot: the default tier reports the seeds needed from the
  confirmatory seeds' spread, after the fact.
* ``confirm``: tuned on three tuning seeds, which are also the pilot: each claim's seed count is the power
  analysis's (80% power at the smallest effect of interest, the pilot's standard deviation, the Bonferroni
  level :math:`\\alpha/m` over the study's :math:`m` primary effects), between 3 and 40, then cut to the budget.

Seeds never overlap between uses: confirmatory seeds are ``0, 1, ...``, tuning seeds ``1000, 1001, ...``,
baseline seeds ``900, 901``; each is a fresh MNIST-1D draw.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tier", "TIERS", "fit_budget", "confirm_seeds"]


@dataclass(frozen=True)
class Tier:
    """A tier: its budget (minutes, idle 2-core machine), workers, tuning seeds and seed range."""

    name: str
    budget_minutes: float
    jobs: int
    tuning_seeds: tuple[int, ...]
    min_seeds: int
    max_seeds: int
    baseline_seeds: tuple[int, ...]
    judged: bool
    description: str

    def as_dict(self) -> dict:
        return {"name": self.name, "budget_minutes": self.budget_minutes, "jobs": self.jobs,
                "tuning_seeds": list(self.tuning_seeds), "min_seeds": self.min_seeds, "max_seeds": self.max_seeds,
                "baseline_seeds": list(self.baseline_seeds), "judged": self.judged, "description": self.description}


TIERS = {
    "quick": Tier("quick", 5, 1, (), 1, 1, (900,), False,
                  "smoke test: one seed, default hyper-parameters, shortened training, nothing judged"),
    "default": Tier("default", 25, 2, (1000,), 3, 3, (900,), True,
                    "one tuning seed, three confirmatory seeds: verdicts with the power three seeds have"),
    "confirm": Tier("confirm", 90, 2, (1000, 1001, 1002), 3, 40, (900, 901), True,
                    "three tuning/pilot seeds, then the seeds the power analysis asks for (3 to 40), "
                    "within the budget"),
}


def confirm_seeds(n: int) -> list[int]:
    """The confirmatory seeds ``0 .. n-1``."""
    return list(range(n))


def fit_budget(wanted: dict[str, int], cost: dict[str, float], minimum: int, budget_cpu: float) -> dict[str, int]:
    """Seed counts within ``budget_cpu`` seconds of CPU: the most expensive claim above ``minimum`` gives up a
    seed until the planned total fits (or every claim is at ``minimum``).

    Args:
        wanted: the seeds each claim asks for.
        cost: each claim's CPU seconds per seed.
        minimum: no claim goes below this.
        budget_cpu: the CPU seconds left for the confirmatory seeds.

    Example::

        >>> fit_budget({"a": 10, "b": 10}, {"a": 1.0, "b": 3.0}, 3, 25.0)
        {'a': 10, 'b': 5}
    """
    counts = {name: max(int(n), minimum) for name, n in wanted.items()}

    def total() -> float:
        return sum(counts[name] * cost.get(name, 0.0) for name in counts)

    while total() > budget_cpu:
        above = [name for name in counts if counts[name] > minimum]
        if not above:
            break
        name = max(above, key=lambda k: counts[k] * cost.get(k, 0.0))
        counts[name] -= 1
    return counts
