"""Run claims over seeds, store every seed's row in the run store, and judge each claim.

Each seed of a claim is one run in :class:`droplab.lab.store.RunStore`: ``study = "study/<claim>"``,
``group`` the study id, ``config`` the claim's settings, ``final`` the raw measurements and the
effects. A claim that raises is stored as ``failed`` and reported with its error; the others go on.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field

from .claim import Claim
from .stats import ONE_SEED, Interval, combine_verdicts, t_interval, verdict

__all__ = ["ClaimResult", "run_claim", "seeds_for", "judge", "ONE_SEED"]


@dataclass
class ClaimResult:
    """A claim's outcome: per-seed rows, each effect's interval and verdict, the claim's verdict and time."""

    claim: Claim
    settings: dict
    seeds: list[int]
    raws: list[dict] = field(default_factory=list)
    effects: list[dict] = field(default_factory=list)
    intervals: dict[str, Interval] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)
    verdict: str = "inconclusive"
    seconds: float = 0.0
    cpu_seconds: float = 0.0  #: this process's CPU time: about the wall time an idle machine would take
    error: str | None = None

    def as_dict(self) -> dict:
        c = self.claim
        return {"number": c.number, "key": c.key, "title": c.title, "setup": c.setup_text, "expected": c.expected,
                "source": c.source, "seeds": self.seeds, "settings": self.settings, "verdict": self.verdict,
                "seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "error": self.error, "per_seed": self.effects,
                "effects": [{"key": e.key, "label": e.label, "direction": e.direction, "primary": e.primary,
                             "verdict": self.verdicts.get(e.key),
                             **(self.intervals[e.key].as_dict() if e.key in self.intervals else {})}
                            for e in c.effects]}


def seeds_for(claim: Claim, seeds: int | None, quick: bool) -> list[int]:
    """``[0]`` with ``quick``; else ``seeds`` (or the claim's default) seeds ``0..n-1``."""
    if quick:
        return [0]
    n = claim.seeds if seeds is None else int(seeds)
    if n < 1:
        raise ValueError(f"seeds must be >= 1, but got {n}")
    return list(range(n))


def judge(result: ClaimResult) -> None:
    """Fill ``intervals``, ``verdicts`` and ``verdict`` from the per-seed effects."""
    for effect in result.claim.effects:
        interval = t_interval([row[effect.key] for row in result.effects])
        result.intervals[effect.key] = interval
        result.verdicts[effect.key] = verdict(interval, effect.direction)
    primary = [result.verdicts[e.key] for e in result.claim.effects if e.primary]
    result.verdict = combine_verdicts(primary)


def run_claim(claim: Claim, *, seeds: int | None = None, quick: bool = False, store=None, study_id: str = "",
              echo=print) -> ClaimResult:
    """Run ``claim`` over its seeds (one with ``quick``), store each seed, and judge it."""
    start, cpu_start = time.perf_counter(), time.process_time()
    settings = claim.setup(quick)
    result = ClaimResult(claim, settings, seeds_for(claim, seeds, quick))
    for seed in result.seeds:
        config = {"claim": claim.name, "quick": quick, "settings": settings}
        run_id = store.start_run(config, name=f"{claim.name} seed {seed}", seed=seed, group=study_id,
                                 study=f"study/{claim.name}") if store else None
        seed_start = time.perf_counter()
        try:
            raw = claim.run(settings, seed)
            effects = {key: float(value) for key, value in claim.measure(raw, settings).items()}
        except Exception as error:  # one broken claim must not lose the others' results
            result.error = f"seed {seed}: {type(error).__name__}: {error}"
            if store:
                store.finish_run(run_id, status="failed", error=traceback.format_exc(),
                                 wall_time_s=time.perf_counter() - seed_start)
            echo(traceback.format_exc())
            break
        result.raws.append(raw)
        result.effects.append(effects)
        if store:
            store.finish_run(run_id, {"raw": raw, "effects": effects}, wall_time_s=time.perf_counter() - seed_start)
        echo(f"  {claim.name} seed {seed}: " + ", ".join(f"{k} {v:+.4f}" for k, v in effects.items())
             + f" ({time.perf_counter() - seed_start:.1f} s)")
    if result.error is None:
        judge(result)
    else:
        result.verdict = "failed"
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = time.process_time() - cpu_start
    return result

