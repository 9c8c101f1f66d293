"""Is dropout helping? The three-run rule: compare no dropout, the intended rate and a reduced rate.

Overfitting shows as high training accuracy with a lower validation accuracy (a large generalization
gap). Dropout should shrink the gap and improve, or at least hold, validation accuracy. If the dropout
run trains far worse than the baseline without a validation gain, dropout is too aggressive or badly
placed; if the reduced rate beats the intended one on validation, the intended rate is too high.

:func:`three_run_verdict` is a pure function of run summaries (dicts with ``train_acc``, ``val_acc``
and optionally ``best_val_acc``, ``label``), so it is equally usable on stored runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Verdict", "three_run_verdict", "OUTCOMES"]

#: outcome codes, from best to worst
OUTCOMES = ("helps", "regularizes", "no_overfitting", "too_aggressive", "reduce_rate", "hurts", "inconclusive")


@dataclass(frozen=True)
class Verdict:
    """The verdict: a code, one plain-language headline, the reasons behind it, and the run to keep."""

    outcome: str
    headline: str
    reasons: list[str] = field(default_factory=list)
    recommended: str = ""

    def as_dict(self) -> dict:
        return {"outcome": self.outcome, "headline": self.headline, "reasons": list(self.reasons),
                "recommended": self.recommended}

    def __str__(self) -> str:
        return "\n".join([self.headline, *(f"  - {reason}" for reason in self.reasons)])


def _get(summary: Mapping, key: str, role: str) -> float:
    if key not in summary or summary[key] is None:
        raise ValueError(f"the {role} summary needs {key!r} (has {sorted(summary)})")
    return float(summary[key])


def _pts(value: float) -> str:
    return f"{100 * value:+.1f} pts"


def three_run_verdict(baseline: Mapping, intended: Mapping, reduced: Mapping | None = None, *,
                      tolerance: float = 0.01, gap_margin: float = 0.02, overfit_gap: float = 0.05,
                      underfit_drop: float = 0.10) -> Verdict:
    """Judge whether dropout helps from a baseline (no dropout), an intended-rate and a reduced-rate run.

    Validation accuracy is compared on ``best_val_acc`` when every summary has it (robust to the last
    epoch's noise), else ``val_acc``; the gap is ``train_acc - val_acc`` at the end of training.

    Args:
        baseline: summary of the run without dropout.
        intended: summary of the run at the intended rate.
        reduced: summary of the run at a reduced rate, or None. Default: None.
        tolerance: a validation-accuracy difference within this is "held", not "improved". Default: 0.01.
        gap_margin: the gap must shrink by more than this to count as reduced. Default: 0.02.
        overfit_gap: a baseline gap below this means there was little overfitting to fix. Default: 0.05.
        underfit_drop: the intended run training this much worse than the baseline means it underfits.
            Default: 0.10.

    Returns:
        A :class:`Verdict` with ``outcome`` in :data:`OUTCOMES`.

    Example::

        >>> v = three_run_verdict({"train_acc": 1.0, "val_acc": 0.65}, {"train_acc": 0.93, "val_acc": 0.74})
        >>> v.outcome
        'helps'
    """
    runs = {"baseline": baseline, "intended": intended}
    if reduced is not None:
        runs["reduced"] = reduced
    val_key = "best_val_acc" if all(s.get("best_val_acc") is not None for s in runs.values()) else "val_acc"
    train = {role: _get(s, "train_acc", role) for role, s in runs.items()}
    val = {role: _get(s, val_key, role) for role, s in runs.items()}
    gap = {role: train[role] - _get(s, "val_acc", role) for role, s in runs.items()}
    label = {role: str(s.get("label") or role) for role, s in runs.items()}
    val_word = "best validation accuracy" if val_key == "best_val_acc" else "validation accuracy"

    d_val = val["intended"] - val["baseline"]
    d_gap = gap["intended"] - gap["baseline"]
    d_train = train["intended"] - train["baseline"]
    reasons = [
        f"generalization gap (train - val accuracy): {gap['baseline']:.3f} without dropout, "
        f"{gap['intended']:.3f} with {label['intended']} ({_pts(d_gap)})",
        f"{val_word}: {val['baseline']:.3f} without dropout, {val['intended']:.3f} with {label['intended']} "
        f"({_pts(d_val)})",
        f"training accuracy: {train['baseline']:.3f} without dropout, {train['intended']:.3f} with "
        f"{label['intended']} ({_pts(d_train)})",
    ]
    gap_reduced = d_gap < -gap_margin
    improved, held, worse = d_val > tolerance, abs(d_val) <= tolerance, d_val < -tolerance
    best_role = max(runs, key=lambda role: val[role])
    recommended = label[best_role]

    reduced_better = reduced is not None and val["reduced"] - val["intended"] > tolerance
    if reduced is not None:
        reasons.append(f"reduced rate {label['reduced']}: {val_word} {val['reduced']:.3f}, gap {gap['reduced']:.3f}"
                       + (" (better than the intended rate)" if reduced_better else ""))

    if gap["baseline"] < overfit_gap and not improved:
        outcome = "no_overfitting"
        headline = (f"Little overfitting to fix: without dropout the gap is only {gap['baseline']:.3f}; "
                    f"dropout does not improve validation accuracy here.")
    elif -d_train > underfit_drop and not improved:
        outcome = "too_aggressive"
        headline = (f"Dropout is too aggressive or badly placed: {label['intended']} trains "
                    f"{100 * -d_train:.1f} pts below the baseline without a validation gain (underfitting).")
        if reduced is not None:
            headline += f" Try the reduced rate ({label['reduced']}) or fewer dropout sites."
    elif reduced_better and (improved or held):
        outcome = "reduce_rate"
        headline = (f"Dropout helps, but the reduced rate {label['reduced']} beats {label['intended']} on "
                    f"validation: lower the rate.")
    elif gap_reduced and improved:
        outcome = "helps"
        headline = (f"Dropout helps: {label['intended']} shrinks the generalization gap by {100 * -d_gap:.1f} pts "
                    f"and improves {val_word} by {100 * d_val:.1f} pts.")
    elif gap_reduced and held:
        outcome = "regularizes"
        headline = (f"Dropout regularizes ({label['intended']} shrinks the gap by {100 * -d_gap:.1f} pts) but "
                    f"validation accuracy only holds; it is not buying accuracy on this model.")
    elif improved:
        outcome = "helps"
        headline = (f"Dropout improves {val_word} by {100 * d_val:.1f} pts, though the gap did not shrink "
                    f"by more than {100 * gap_margin:.0f} pts.")
    elif worse:
        outcome = "reduce_rate" if reduced is not None and val["reduced"] >= val["baseline"] - tolerance \
            else "hurts"
        headline = (f"Dropout hurts: {label['intended']} lowers {val_word} by {100 * -d_val:.1f} pts"
                    + (f"; the reduced rate {label['reduced']} does better." if outcome == "reduce_rate" else "."))
    else:
        outcome = "inconclusive"
        headline = "Inconclusive: dropout changes neither the gap nor validation accuracy beyond the tolerances."
    return Verdict(outcome, headline, reasons, recommended)
