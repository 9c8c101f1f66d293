"""Diagnostics: is dropout in the right place, is it helping, and does it prevent co-adaptation?

* :func:`lint`: static and traced checks of where a model applies dropout (see :mod:`.lint_rules`).
* :func:`variance_shift` and :func:`recalibrate_bn`: the train/inference variance shift of a
  BatchNorm fed by dropout, and its fix.
* Co-adaptation measures (:mod:`.coadaptation_measures`): pairwise correlation of hidden units, effective
  rank, activation sparsity, unit-ablation sensitivity.
* Training-health monitors (:mod:`.health`): per-layer gradient norms, early-epoch loss slope, and
  :func:`three_run_verdict` (baseline / intended / reduced, from :mod:`.verdict`).
"""

from .batchnorm_shift import VarianceShift, recalibrate_bn, variance_shift
from .coadaptation_measures import (
    Ablation,
    LayerCoadaptation,
    ablation_sensitivity,
    capture_activations,
    coadaptation,
    coadaptation_summary,
    effective_rank,
    hidden_layers,
    pairwise_correlation,
    sparsity,
)
from .health import EpochHealth, HealthMonitor, grad_norms, loss_slope
from .lint_rules import RULES, Finding, Findings, lint
from .verdict import OUTCOMES, Verdict, three_run_verdict

__all__ = [
    "RULES",
    "Finding",
    "Findings",
    "lint",
    "VarianceShift",
    "variance_shift",
    "recalibrate_bn",
    "capture_activations",
    "hidden_layers",
    "pairwise_correlation",
    "effective_rank",
    "sparsity",
    "ablation_sensitivity",
    "Ablation",
    "LayerCoadaptation",
    "coadaptation",
    "coadaptation_summary",
    "grad_norms",
    "loss_slope",
    "EpochHealth",
    "HealthMonitor",
    "Verdict",
    "OUTCOMES",
    "three_run_verdict",
]
