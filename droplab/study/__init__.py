"""``droplab study``: the literature's claims about dropout, each tested as its source states it, with a verdict.

One module per claim in :mod:`droplab.study.claims`; :mod:`.registry` finds them, :mod:`.runner` tunes each
arm, sizes the seeds from the pilot variance and runs the confirmatory seeds on the lab's trainer
(:mod:`.training`), :mod:`.analysis` turns the measurements into verdicts with the tests, power and adjustment of
:mod:`.stats`, :mod:`.baselines` reproduces the published baselines first, and :mod:`.report` / :mod:`.page`
write the report and the study page from ``results.json`` (:mod:`.results`).
"""

from .claim import Arm, Claim, Effect, Part
from .records import ClaimResult, Study
from .registry import all_claims, resolve
from .runner import run_study
from .stats import (
    VERDICTS,
    adjust,
    difference_test,
    judge,
    minimum_detectable_effect,
    power,
    seeds_for_power,
    t_interval,
    tost,
)
from .training import Trained, fit

__all__ = ["Arm", "Claim", "Effect", "Part", "all_claims", "resolve", "run_study", "Study", "ClaimResult", "fit",
           "Trained", "t_interval", "difference_test", "tost", "power", "seeds_for_power",
           "minimum_detectable_effect", "adjust", "judge", "VERDICTS"]
