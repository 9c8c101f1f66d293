"""``droplab study``: the literature's claims about dropout, each a small controlled experiment with a verdict.

One module per claim in :mod:`droplab.study.claims` (setup, run, measure, plot); :mod:`.registry`
finds them, :mod:`.runner` runs them over seeds and stores each seed in the run store,
:mod:`.stats` gives the Student-t interval and the verdict, :mod:`.report` writes the report.
"""

from .claim import Claim, Effect
from .registry import all_claims, resolve
from .runner import ClaimResult, run_claim
from .stats import auroc, t_interval, t_quantile, verdict

__all__ = ["Claim", "Effect", "ClaimResult", "all_claims", "resolve", "run_claim", "t_interval", "t_quantile",
           "verdict", "auroc"]
