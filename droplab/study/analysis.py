"""From measurements to verdicts: each arm's chosen candidate, the pilot and the seeds it asks for, and the tests,
intervals, minimum detectable effects and adjusted verdicts of every effect (see :mod:`.stats` for the rule)."""

from __future__ import annotations

import math
import statistics

from .claim import Claim
from .plan import Tier
from .records import ClaimResult, Study
from .stats import ALPHA

__all__ = ["measure_seed", "choose", "pilot", "plan_seeds", "judge_study", "withhold"]


def measure_seed(claim: Claim, settings: dict, raws: dict) -> dict:
    values = claim.measure(raws, settings)
    missing = [e.key for e in claim.effects if e.key not in values]
    if missing:
        raise KeyError(f"claim {claim.name}: measure() gave no {missing}")
    return {key: float(value) for key, value in values.items()}


def plan_seeds(result: ClaimResult, tier: Tier, m: int, override: int | None) -> int:
    """The confirmatory seed count: the power analysis on the pilot (clamped to the tier's range) or ``override``."""
    from .stats import seeds_for_power, tost_seeds_for_power

    alpha = ALPHA / max(m, 1)
    needed = []
    for effect in result.claim.effects:
        pilot = result.pilot.get(effect.key)
        if not effect.primary or pilot is None or pilot["sd"] is None:
            continue
        if effect.kind == "equivalence":
            n = tost_seeds_for_power(effect.sesoi, pilot["sd"], alpha)
        else:
            n = seeds_for_power(effect.sesoi, pilot["sd"], alpha)
        pilot["n_required"] = n
        needed.append(n)
    result.n_required = max(needed) if needed else None
    if override is not None:
        return override
    if result.n_required is None:
        return tier.min_seeds
    return min(max(result.n_required, tier.min_seeds), tier.max_seeds)


def pilot(result: ClaimResult, tier: Tier) -> None:
    claim, rows = result.claim, []
    for seed in tier.tuning_seeds:
        raws = {arm.name: result.raws_tune[(arm.name, result.chosen[arm.name], seed)] for arm in claim.arms}
        rows.append(measure_seed(claim, result.settings, raws))
    for effect in claim.effects:
        values = [row[effect.key] for row in rows]
        sd = statistics.stdev(values) if len(values) > 1 else None
        result.pilot[effect.key] = {"values": values, "sd": sd, "n_required": None}


def choose(result: ClaimResult) -> None:
    for arm in result.claim.arms:
        scores = result.tuning.get(arm.name, {})
        means = {c: math.fsum(v) / len(v) for c, v in scores.items() if v}
        result.chosen[arm.name] = max(sorted(means), key=lambda c: means[c]) if means else 0


def judge_study(study: Study) -> None:
    """Tests, intervals, minimum detectable effects and verdicts of every effect; adjustment across the study.

    The family is every primary effect of a claim that is judged (not failed, not withheld): their difference
    tests are adjusted together, and so are their TOSTs (margin: the smallest effect of interest).
    """
    from .stats import (
        adjust,
        difference_test,
        judge,
        minimum_detectable_effect,
        seeds_for_power,
        t_interval,
        tost,
        tost_minimum_margin,
        tost_seeds_for_power,
    )

    withhold(study)
    family = [(r, e) for r in study.results if not r.errors and r.withheld is None and len(r.per_seed) > 1
              for e in r.claim.effects if e.primary]
    study.family = len(family)
    alpha_plan = ALPHA / max(study.family, 1)
    for result in study.results:
        if result.errors or not result.per_seed:
            continue
        for effect in result.claim.effects:
            values = [row[effect.key] for row in result.per_seed]
            interval = t_interval(values)
            entry = {"values": values, **interval.as_dict(), "p_difference": None, "p_equivalence": None,
                     "p_difference_adjusted": None, "p_equivalence_adjusted": None, "mde": None, "verdict": None,
                     "seeds_for_power": None}
            if len(values) > 1:
                sd, n = interval.sd, len(values)
                equivalence = effect.kind == "equivalence"
                entry.update(p_difference=difference_test(values), p_equivalence=tost(values, effect.sesoi),
                             mde=(tost_minimum_margin(sd, n, alpha_plan) if equivalence
                                  else minimum_detectable_effect(sd, n, alpha_plan)),
                             seeds_for_power=(tost_seeds_for_power if equivalence else seeds_for_power)(
                                 effect.sesoi, sd, alpha_plan))
            result.effects[effect.key] = entry
    if family:
        for key, adjusted in (("p_difference", "p_difference_adjusted"), ("p_equivalence", "p_equivalence_adjusted")):
            ps = adjust([r.effects[e.key][key] for r, e in family], study.adjust)
            for (r, e), p in zip(family, ps):
                r.effects[e.key][adjusted] = p
        for r, e in family:
            entry = r.effects[e.key]
            entry["verdict"] = judge(e.kind, e.direction, entry["mean"], entry["p_difference_adjusted"],
                                     entry["p_equivalence_adjusted"], entry["mde"], e.sesoi)


def withhold(study: Study) -> None:
    for result in study.results:
        off = [name for name in result.claim.baselines if study.baselines.get(name, {}).get("ok") is False]
        failed = [name for name, check in result.checks.items() if not check["passed"]]
        reasons = []
        if off:
            reasons.append("baseline off: " + ", ".join(off))
        if failed:
            reasons.append("check failed: " + "; ".join(f"{n} ({result.checks[n]['detail']})" for n in failed))
        result.withheld = "; ".join(reasons) or None
