r"""The study's statistics: paired tests over seeds, equivalence (TOST), power, and adjustment across effects.

Every effect is a paired difference :math:`d_1..d_n` (one per seed: the two arms share the seed's data draw,
initial weights and batch order). With mean :math:`\bar d`, standard deviation :math:`s` and standard error
:math:`s/\sqrt n`, on :math:`n - 1` degrees of freedom (Student t; SciPy's distributions):

* the two-sided **difference test** of :math:`\mu = 0`: :math:`t = \bar d / (s/\sqrt n)`;
* the **equivalence test** (TOST, Schuirmann 1987) against a margin :math:`\Delta`: the larger p-value of the
  one-sided tests of :math:`\mu \le -\Delta` and :math:`\mu \ge \Delta`;
* **power** of the difference test at a true effect :math:`\delta` from the noncentral t with noncentrality
  :math:`\delta\sqrt n / \sigma`; the seeds needed for 80% power and the **minimum detectable effect** (MDE)
  at a given :math:`n`. TOST is planned by the usual rule for a true difference of 0: each one-sided test
  at level :math:`\alpha` gets power :math:`1 - \beta/2` at :math:`\Delta`, so both reject together with
  probability at least :math:`1 - \beta`;
* **Holm** (step-down, family-wise error) or **Benjamini-Hochberg** (false discovery rate) adjustment of a
  family of p-values.

:func:`judge` turns the two adjusted p-values of an effect into its verdict (see :data:`VERDICTS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Interval", "t_interval", "difference_test", "tost", "power", "seeds_for_power",
           "minimum_detectable_effect", "tost_seeds_for_power", "tost_minimum_margin", "adjust", "judge",
           "VERDICTS", "ADJUSTMENTS", "ALPHA", "POWER", "auroc"]

ALPHA = 0.05  #: the study's significance level (after adjustment)
POWER = 0.8  #: the power the seed counts aim for
ADJUSTMENTS = ("holm", "bh")

#: every verdict an effect can get
VERDICTS = {
    "reproduced": "the effect the source predicts is there (difference claims: significant in the predicted "
                  "direction and not shown smaller than the smallest effect of interest; equivalence claims: "
                  "shown within the margin)",
    "contradicted": "significant the other way (difference claims), or significantly different and not shown "
                    "within the margin (equivalence claims)",
    "no effect": "shown smaller than the smallest effect of interest in both directions (TOST), where the "
                 "source predicts an effect",
    "negligible": "significant, but also shown smaller than the smallest effect of interest: real and too small "
                  "to matter",
    "underpowered": "neither test decides and the minimum detectable effect at 80% power exceeds the smallest "
                    "effect of interest: more seeds are needed",
    "inconclusive": "neither test decides although the design had the power for the smallest effect of interest",
}


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` per-seed values with its Student-t interval (``low``/``high`` None when ``n < 2``)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    sd: float | None

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "sd": self.sd}


def _values(values: Sequence[float]) -> list[float]:
    values = [float(v) for v in values]
    if not values:
        raise ValueError("needs at least one per-seed value")
    if any(not math.isfinite(v) for v in values):
        raise ValueError(f"the per-seed values must be finite numbers, but got {values}")
    return values


def _moments(values: Sequence[float]) -> tuple[float, float, int]:
    values = _values(values)
    n = len(values)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, sd, n


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    r""":math:`\bar d \pm t_{(1+c)/2,\,n-1}\, s/\sqrt n` over the per-seed ``values``.

    Example::

        >>> iv = t_interval([1.0, 2.0, 3.0])
        >>> round(iv.mean, 3), round(iv.low, 3), round(iv.high, 3)
        (2.0, -0.484, 4.484)
    """
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), but got {confidence!r}")
    mean, sd, n = _moments(values)
    if n < 2:
        return Interval(mean, None, None, n, None)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def difference_test(values: Sequence[float]) -> float:
    """Two-sided p-value of the one-sample t-test of mean 0 (a zero spread gives 0 or 1 exactly).

    Example::

        >>> round(difference_test([0.9, 1.1, 1.0, 1.2]), 6)
        0.000505
    """
    from scipy import stats

    mean, sd, n = _moments(values)
    if n < 2:
        raise ValueError("a test needs at least two seeds")
    if sd == 0.0:
        return 0.0 if mean != 0.0 else 1.0
    return float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))


def _check_margin(margin: float) -> float:
    margin = float(margin)
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a positive number, but got {margin!r}")
    return margin


def tost(values: Sequence[float], margin: float) -> float:
    r"""p-value of the two one-sided tests that the mean lies within :math:`(-\Delta, \Delta)`.

    Small when the per-seed values show the effect smaller than ``margin`` in both directions.

    Example::

        >>> round(tost([0.01, -0.02, 0.0, 0.015, -0.005], margin=0.05), 5)
        0.00061
    """
    from scipy import stats

    margin = _check_margin(margin)
    mean, sd, n = _moments(values)
    if n < 2:
        raise ValueError("a test needs at least two seeds")
    if sd == 0.0:
        return 0.0 if abs(mean) < margin else 1.0
    se = sd / math.sqrt(n)
    below = stats.t.sf((mean + margin) / se, n - 1)  # H0: mean <= -margin
    above = stats.t.cdf((mean - margin) / se, n - 1)  # H0: mean >= +margin
    return float(max(below, above))


def _check_planning(sd: float, n: int | None, alpha: float) -> None:
    if not (math.isfinite(sd) and sd >= 0):
        raise ValueError(f"sd must be a finite number >= 0, but got {sd!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 2):
        raise ValueError(f"n must be an int >= 2, but got {n!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), but got {alpha!r}")


def power(effect: float, sd: float, n: int, alpha: float = ALPHA, *, sided: int = 2) -> float:
    r"""Power of the one-sample t-test (two-sided, or one-sided ``sided=1`` toward a positive effect).

    :math:`P(|T'| > t_{1-\alpha/2})` with :math:`T'` noncentral t on :math:`n-1` degrees of freedom and
    noncentrality :math:`\delta \sqrt n / \sigma`.

    Example::

        >>> round(power(1.0, 1.0, 10), 4)  # statsmodels' TTestPower gives the same
        0.8031
    """
    from scipy import stats

    _check_planning(sd, n, alpha)
    if sd == 0.0:
        return 1.0
    df, nc = n - 1, abs(float(effect)) * math.sqrt(n) / sd
    if sided == 1:
        return float(stats.nct.sf(stats.t.ppf(1 - alpha, df), df, nc))
    if sided != 2:
        raise ValueError(f"sided must be 1 or 2, but got {sided!r}")
    crit = stats.t.ppf(1 - alpha / 2, df)
    # P(T' < -crit) as P(T'(-nc) > crit): SciPy's far left tail of nct.cdf returns NaN for large nc
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def seeds_for_power(effect: float, sd: float, alpha: float = ALPHA, target: float = POWER, *, sided: int = 2,
                    most: int = 10_000) -> int:
    """The fewest seeds (at least 2) whose test has ``target`` power at ``effect``.

    Example::

        >>> seeds_for_power(1.0, 1.0)
        10
    """
    _check_planning(sd, None, alpha)
    if effect == 0:
        raise ValueError("effect must be non-zero: no number of seeds detects an effect of 0")
    for n in range(2, most + 1):
        if power(effect, sd, n, alpha, sided=sided) >= target:
            return n
    return most


def minimum_detectable_effect(sd: float, n: int, alpha: float = ALPHA, target: float = POWER, *,
                              sided: int = 2) -> float:
    """The smallest true effect the test detects with ``target`` power from ``n`` seeds of spread ``sd``.

    Example::

        >>> round(minimum_detectable_effect(1.0, 10), 4)
        0.996
    """
    from scipy.optimize import brentq

    _check_planning(sd, n, alpha)
    if sd == 0.0:
        return 0.0
    high = sd
    while power(high, sd, n, alpha, sided=sided) < target:
        high *= 2.0
    return float(brentq(lambda e: power(e, sd, n, alpha, sided=sided) - target, 0.0, high, xtol=1e-10 * sd))


def tost_seeds_for_power(margin: float, sd: float, alpha: float = ALPHA, target: float = POWER) -> int:
    """Seeds for TOST to show equivalence within ``margin`` with ``target`` power when the truth is 0.

    Each one-sided test at ``alpha`` gets power ``1 - (1 - target) / 2`` at ``margin``.
    """
    return seeds_for_power(_check_margin(margin), sd, alpha, 1 - (1 - target) / 2, sided=1)


def tost_minimum_margin(sd: float, n: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest margin TOST shows with ``target`` power from ``n`` seeds when the truth is 0."""
    return minimum_detectable_effect(sd, n, alpha, 1 - (1 - target) / 2, sided=1)


def adjust(p_values: Sequence[float], method: str = "holm") -> list[float]:
    """Adjusted p-values of a family: ``"holm"`` (family-wise error) or ``"bh"`` (false discovery rate).

    Holm: the :math:`i`-th smallest becomes :math:`\\max_{j \\le i} \\min(1, (m - j + 1) p_{(j)})`;
    Benjamini-Hochberg: :math:`\\min_{j \\ge i} \\min(1, m\\, p_{(j)} / j)`.

    Example::

        >>> adjust([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
        >>> [round(p, 6) for p in adjust([0.01, 0.04, 0.03], "bh")]
        [0.03, 0.04, 0.04]
    """
    if method not in ADJUSTMENTS:
        raise ValueError(f"method must be one of {', '.join(ADJUSTMENTS)}, but got {method!r}")
    ps = [float(p) for p in p_values]
    if any(not 0.0 <= p <= 1.0 for p in ps):
        raise ValueError(f"p-values must lie in [0, 1], but got {ps}")
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    out = [0.0] * m
    if method == "holm":
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * ps[i]))
            out[i] = running
    else:
        running = 1.0
        for rank in range(m - 1, -1, -1):
            i = order[rank]
            running = min(running, min(1.0, m * ps[i] / (rank + 1)))
            out[i] = running
    return out


def judge(kind: str, direction: int, mean: float, p_difference: float, p_equivalence: float, mde: float,
          sesoi: float, alpha: float = ALPHA) -> str:
    """The verdict of one effect from its (adjusted) p-values; see :data:`VERDICTS`.

    Args:
        kind: ``"difference"`` (the source predicts an effect of sign ``direction``) or ``"equivalence"``
            (the source predicts no difference larger than ``sesoi``).
        direction: +1 or -1, the predicted sign (difference claims).
        mean: the estimated effect.
        p_difference: adjusted p-value of the difference test.
        p_equivalence: adjusted p-value of TOST with margin ``sesoi``.
        mde: the minimum detectable effect (difference claims) or smallest showable margin (equivalence
            claims) at 80% power, on the same scale as ``sesoi``.
        sesoi: the smallest effect of interest (the equivalence margin).

    Example::

        >>> judge("difference", +1, 0.04, 0.001, 0.9, 0.01, 0.01)
        'reproduced'
        >>> judge("difference", +1, 0.001, 0.6, 0.01, 0.008, 0.01)
        'no effect'
        >>> judge("difference", +1, 0.004, 0.3, 0.2, 0.03, 0.01)
        'underpowered'
    """
    if kind not in ("difference", "equivalence"):
        raise ValueError(f"kind must be 'difference' or 'equivalence', but got {kind!r}")
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, but got {direction!r}")
    differs, equivalent = p_difference < alpha, p_equivalence < alpha
    if kind == "equivalence":
        if equivalent:
            return "reproduced"
        if differs:
            return "contradicted"
    else:
        if differs and equivalent:
            return "negligible"
        if differs:
            return "reproduced" if (mean > 0) == (direction > 0) else "contradicted"
        if equivalent:
            return "no effect"
    return "underpowered" if mde > sesoi else "inconclusive"


def auroc(negatives, positives) -> float:
    """The lab's AUROC (:func:`droplab.lab.uncertainty.auroc`): how well a score ranks ``positives`` above
    ``negatives`` (ties count half)."""
    import torch

    from ..lab.uncertainty import auroc as lab_auroc

    return lab_auroc(torch.as_tensor(negatives, dtype=torch.float64), torch.as_tensor(positives, dtype=torch.float64))
