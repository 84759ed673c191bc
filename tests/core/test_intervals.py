"""Exact binomial bounds on an agreement measured on a sample (Clopper-Pearson)."""

from __future__ import annotations

import math

import pytest

from core.intervals import at_least_probability, interval, lower_bound, reaches, upper_bound


def binomial_tail(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.parametrize(
    ("k", "n", "p"), [(3, 10, 0.2), (95, 100, 0.95), (50, 100, 0.4), (990, 1000, 0.985)]
)
def test_binomial_tail_matches_the_sum_of_its_terms(k: int, n: int, p: float) -> None:
    assert at_least_probability(k, n, p) == pytest.approx(binomial_tail(k, n, p), rel=1e-9)


def test_two_sided_interval_matches_published_values() -> None:
    # Clopper and Pearson's exact interval, as tabulated (e.g. 5 of 10: 0.1871 to 0.8129).
    half = interval(5, 10)
    assert (half.low, half.high) == (
        pytest.approx(0.187086, abs=1e-6),
        pytest.approx(0.812914, abs=1e-6),
    )
    high = interval(95, 100)
    assert (high.low, high.high) == (
        pytest.approx(0.887165, abs=1e-6),
        pytest.approx(0.983568, abs=1e-6),
    )
    assert high.estimate == 0.95


def test_all_agreeing_has_the_closed_form_lower_bound() -> None:
    # k = n: P(all agree) = p**n = alpha, so the bound is alpha ** (1 / n).
    for n in (1, 10, 59, 500):
        assert lower_bound(n, n) == pytest.approx(0.05 ** (1 / n), rel=1e-9)
        assert upper_bound(n, n) == 1.0


def test_no_agreement_has_bound_zero_and_the_closed_form_upper_bound() -> None:
    assert lower_bound(0, 20) == 0.0
    assert upper_bound(0, 20) == pytest.approx(1 - 0.05 ** (1 / 20), rel=1e-9)


def test_no_pairs_bound_nothing() -> None:
    assert lower_bound(0, 0) == 0.0
    assert upper_bound(0, 0) == 1.0
    empty = interval(0, 0)
    assert (empty.estimate, empty.low, empty.high) == (None, 0.0, 1.0)
    assert not reaches(0, 0, 0.5)


def test_lower_bound_grows_with_agreements_and_with_evidence() -> None:
    bounds = [lower_bound(k, 100) for k in range(101)]
    assert bounds == sorted(bounds)
    assert len(set(bounds)) == len(bounds)
    same_share = [lower_bound(96 * m, 100 * m) for m in (1, 2, 5, 10, 50)]
    assert same_share == sorted(same_share)
    assert all(b < 0.96 for b in same_share)


def test_the_bound_holds_at_its_stated_level() -> None:
    # At p = 0.95, the share of samples whose lower bound lies above p is at most 5%.
    n, p = 200, 0.95
    wrong = sum(
        binomial_tail(k, n, p) - binomial_tail(k + 1, n, p)
        for k in range(n + 1)
        if lower_bound(k, n) > p
    )
    assert 0.0 < wrong <= 0.05


def test_reaches_agrees_with_the_bound() -> None:
    for k, n in [(59, 59), (58, 59), (963, 1000), (955, 1000), (100, 103)]:
        assert reaches(k, n, 0.95) == (lower_bound(k, n) >= 0.95)


def test_counts_outside_the_sample_are_refused() -> None:
    with pytest.raises(ValueError, match="5 of 4"):
        lower_bound(5, 4)
    with pytest.raises(ValueError, match="-1 of 4"):
        interval(-1, 4)
