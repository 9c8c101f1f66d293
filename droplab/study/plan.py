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

__all__ = ["Tier", "TIERS", "fit_budget", "planned_cpu", "confirm_seeds"]


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


def planned_cpu(counts: dict[str, int], costs: dict[str, list[tuple[str, float]]]) -> float:
    """CPU seconds of running each claim ``counts[claim]`` seeds, a run shared by claims counted once per seed.

    ``costs[claim]`` lists ``(family, seconds per seed)``: a family is one arm's training (model, data and
    arguments without the seed); claims naming the same family share its runs, so it costs its seconds times
    the largest count among them.

    Example::

        >>> planned_cpu({"a": 10, "b": 4}, {"a": [("mlp", 2.0), ("a-own", 1.0)], "b": [("mlp", 2.0)]})
        30.0
    """
    largest: dict[str, tuple[int, float]] = {}
    for claim, items in costs.items():
        for family, seconds in items:
            n = max(largest.get(family, (0, 0.0))[0], counts.get(claim, 0))
            largest[family] = (n, max(seconds, largest.get(family, (0, 0.0))[1]))
    return sum(n * seconds for n, seconds in largest.values())


def fit_budget(wanted: dict[str, int], costs: dict[str, list[tuple[str, float]]], minimum: int,
               budget_cpu: float) -> dict[str, int]:
    """Seed counts within ``budget_cpu`` CPU seconds: while the plan (:func:`planned_cpu`) is over, the claim whose
    next seed saves the most gives it up (the one with the most seeds where none saves anything alone), never
    below ``minimum``.

    Example::

        >>> fit_budget({"a": 10, "b": 10}, {"a": [("a", 1.0)], "b": [("b", 3.0)]}, 3, 25.0)
        {'a': 10, 'b': 5}
    """
    counts = {name: max(int(n), minimum) for name, n in wanted.items()}
    total = planned_cpu(counts, costs)
    while total > budget_cpu:
        above = [name for name in counts if counts[name] > minimum]
        if not above:
            break
        savings = {name: total - planned_cpu({**counts, name: counts[name] - 1}, costs) for name in above}
        name = max(above, key=lambda k: (savings[k], counts[k]))
        counts[name] -= 1
        total -= savings[name]
    return counts
