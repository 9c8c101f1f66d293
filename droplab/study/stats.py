r"""The study's statistics: a Student-t 95% interval over seeds and the three-way verdict.

The interval of :math:`n` per-seed effects :math:`e_1..e_n` is :math:`\bar e \pm t_{0.975,\,n-1}\, s/\sqrt n`
with :math:`s` the sample standard deviation. The t quantile is computed here (no SciPy): the
two-sided probability :math:`P(|T| < t)` of an integer-degree Student t has a finite closed form
(Abramowitz & Stegun 26.7.3-4), inverted by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Interval", "t_quantile", "t_interval", "verdict", "combine_verdicts", "auroc", "spearman", "VERDICTS",
           "ONE_SEED"]

VERDICTS = ("reproduced", "contradicted", "inconclusive")
ONE_SEED = "inconclusive (one seed)"


def _t_two_sided(t: float, df: int) -> float:
    """:math:`P(|T| < t)` for a Student t with ``df`` (integer) degrees of freedom, ``t >= 0``."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:  # odd: (2/pi) (theta + sin cos (1 + 2/3 c^2 + 2*4/(3*5) c^4 + ...)), df-3 powers
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2.0 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sin (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ...), up to c^(df-2)
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def t_quantile(confidence: float, df: int) -> float:
    r"""The two-sided Student-t critical value :math:`t` with :math:`P(|T| < t) =` ``confidence``.

    Args:
        confidence: coverage in (0, 1), e.g. 0.95 (gives :math:`t_{0.975,\,df}`).
        df: degrees of freedom, an int >= 1.

    Example::

        >>> round(t_quantile(0.95, 4), 4)
        2.7764
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), but got {confidence!r}")
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df must be an int >= 1, but got {df!r}")
    low, high = 0.0, 1.0
    while _t_two_sided(high, df) < confidence:
        high *= 2.0
    for _ in range(200):  # bisection to machine precision
        mid = 0.5 * (low + high)
        if _t_two_sided(mid, df) < confidence:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` per-seed values and its Student-t interval (``low``/``high`` are NaN when ``n < 2``)."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    r""":math:`\bar e \pm t_{(1+c)/2,\,n-1}\, s/\sqrt n` over the per-seed ``values``.

    Args:
        values: one number per seed (NaNs are an error: a failed seed must not vanish silently).
        confidence: coverage. Default: 0.95.

    Example::

        >>> iv = t_interval([1.0, 2.0, 3.0])
        >>> round(iv.mean, 3), round(iv.low, 3), round(iv.high, 3)
        (2.0, -0.484, 4.484)
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("t_interval needs at least one value")
    if any(math.isnan(v) for v in values):
        raise ValueError(f"t_interval got NaN among the per-seed values: {values}")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def verdict(interval: Interval, direction: int) -> str:
    """``"reproduced"`` when the interval excludes zero on the ``direction`` side (+1 or -1),
    ``"contradicted"`` when it excludes zero on the other, ``"inconclusive"`` otherwise; one seed gives
    :data:`ONE_SEED`.

    Example::

        >>> verdict(t_interval([0.10, 0.12, 0.11]), -1)
        'contradicted'
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, but got {direction!r}")
    if interval.n < 2:
        return ONE_SEED
    if interval.low > 0.0:
        return "reproduced" if direction == 1 else "contradicted"
    if interval.high < 0.0:
        return "reproduced" if direction == -1 else "contradicted"
    return "inconclusive"


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """A claim with several primary parts: reproduced if all are, contradicted if any is, else inconclusive."""
    if not verdicts:
        raise ValueError("combine_verdicts needs at least one verdict")
    if any(v == ONE_SEED for v in verdicts):
        return ONE_SEED
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if any(v == "contradicted" for v in verdicts):
        return "contradicted"
    return "inconclusive"


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def auroc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    r"""Area under the ROC curve of a score separating ``positives`` from ``negatives``.

    The Mann-Whitney form :math:`P(s^+ > s^-) + \tfrac12 P(s^+ = s^-)`, computed from average ranks.

    Example::

        >>> auroc([0.1, 0.4], [0.35, 0.8])
        0.75
    """
    negatives, positives = [float(v) for v in negatives], [float(v) for v in positives]
    if not negatives or not positives:
        raise ValueError("auroc needs at least one negative and one positive score")
    ranks = _average_ranks(negatives + positives)
    n_pos, n_neg = len(positives), len(negatives)
    rank_sum = sum(ranks[n_neg:])
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks.

    Example::

        >>> spearman([1, 2, 3, 4], [10, 20, 15, 40])
        0.8
    """
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"spearman needs two sequences of equal length >= 2, but got {len(a)} and {len(b)}")
    ra, rb = _average_ranks(list(a)), _average_ranks(list(b))
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    norm = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / norm if norm > 0 else 0.0
