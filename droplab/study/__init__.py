"""``droplab study``: the literature's claims about dropout, each tested as its source states it, with a verdict.

One module per claim in :mod:`droplab.study.claims`; :mod:`.registry` finds them, :mod:`.runner` tunes each
arm, sizes the seeds from the pilot variance and runs the confirmatory seeds on the lab's trainer
(:mod:`.training`), :mod:`.stats` holds the tests, power and adjustment, :mod:`.baselines` reproduces the
published baselines first, and :mod:`.report` / :mod:`.page` write the report and the study page.
"""

from .claim import Arm, Claim, Effect, Part
from .registry import all_claims, resolve

__all__ = ["Arm", "Claim", "Effect", "Part", "all_claims", "resolve"]
