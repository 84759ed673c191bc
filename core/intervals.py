"""Exact binomial confidence bounds (Clopper-Pearson) on an agreement measured on a sample.

A share of ``k`` agreeing answers out of ``n`` is an estimate; what stillroom promises is
held to its bound instead. The one-sided lower bound at confidence ``1 - alpha`` is the
agreement ``p`` at which seeing ``k`` or more agreements in ``n`` has probability exactly
``alpha``: the ``alpha`` quantile of Beta(k, n - k + 1). It is exact (never below its
stated coverage, whatever ``p`` is), and 0 when ``n`` is 0 or ``k`` is 0.

Computed here from the regularised incomplete beta function (a continued fraction), with
quantiles by bisection: no statistics library is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CONFIDENCE = 0.95
METHOD = "clopper-pearson"

_BISECTIONS = 60


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    # The continued fraction converges fast below the mean; use the symmetry beyond it.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return result


def at_least_probability(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return regularized_beta(p, k, n - k + 1)


def lower_bound(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson lower bound on the agreement behind ``k`` of ``n``: the
    true agreement is at or above it with probability ``confidence``."""
    _check(k, n)
    if k == 0:
        return 0.0
    alpha = 1.0 - confidence
    low, high = 0.0, 1.0
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        if at_least_probability(k, n, middle) < alpha:
            low = middle
        else:
            high = middle
    return low


def upper_bound(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound (1 when every answer agreed, or ``n`` is 0)."""
    _check(k, n)
    return 1.0 - lower_bound(n - k, n, confidence)


def reaches(k: int, n: int, target: float, confidence: float = CONFIDENCE) -> bool:
    """Whether the one-sided lower bound of ``k`` of ``n`` is at or above ``target``:
    seeing ``k`` or more agreements would be that unlikely (``1 - confidence``) if the
    agreement were only ``target``. One evaluation, no bisection."""
    _check(k, n)
    if n == 0:
        return False
    return at_least_probability(k, n, target) <= 1.0 - confidence


@dataclass(frozen=True, slots=True)
class Interval:
    """An agreement measured on a sample: the estimate ``k / n`` and its two-sided
    Clopper-Pearson interval at ``confidence`` (each side at half the remaining level)."""

    agreed: int
    pairs: int
    estimate: float | None
    low: float
    high: float
    confidence: float = CONFIDENCE

    def public(self) -> dict[str, object]:
        """The interval as the admin API shows it."""
        return {
            "agreement": self.estimate,
            "pairs": self.pairs,
            "agreed": self.agreed,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "method": METHOD,
        }


def interval(k: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """``k`` of ``n`` agreed: the estimate and its two-sided exact interval."""
    _check(k, n)
    side = 1.0 - (1.0 - confidence) / 2
    return Interval(
        agreed=k,
        pairs=n,
        estimate=k / n if n else None,
        low=lower_bound(k, n, side),
        high=upper_bound(k, n, side),
        confidence=confidence,
    )


def _check(k: int, n: int) -> None:
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= agreed <= pairs, got {k} of {n}")
