"""Held-out evaluation and confidence calibration."""

from __future__ import annotations

import pytest

from core.intervals import lower_bound
from distiller.curation import Example
from distiller.evaluation import StudentAnswer, calibrate, evaluate


def test_calibration_keeps_the_largest_share_whose_lower_bound_reaches_the_target() -> None:
    # 200 sure answers, all right; then 100 less sure ones of which 10 are wrong.
    results = [(-0.01 - n / 10_000, True) for n in range(200)]
    results += [(-0.5 - n / 1000, n % 10 != 0) for n in range(100)]
    calibration = calibrate(results, target=0.9)
    kept = calibration.retained_share * len(results)
    agreed = round(calibration.retained_agreement * kept)
    assert lower_bound(agreed, round(kept)) >= 0.9
    assert calibration.lower_bound == pytest.approx(lower_bound(agreed, round(kept)))
    assert calibration.pairs == 300
    # every looser threshold would break the guarantee
    ranked = sorted(results, reverse=True)
    for count in range(round(kept) + 1, len(ranked) + 1):
        assert lower_bound(sum(a for _, a in ranked[:count]), count) < 0.9
    assert calibration.threshold == ranked[round(kept) - 1][0]


def test_calibration_is_stricter_than_the_point_estimate() -> None:
    # 97 of 100 agree: above 95% on the point estimate, but too few pairs to show it.
    results = [(-0.1 - n / 1000, n % 40 != 1) for n in range(100)]
    assert calibrate(results, target=0.95).threshold is None
    ten_times = [(-0.1 - n / 10_000, n % 40 != 1) for n in range(1000)]
    assert calibrate(ten_times, target=0.95).threshold is not None


def test_calibration_without_any_reachable_threshold() -> None:
    calibration = calibrate([(-0.1, False), (-0.2, True)], target=0.95)
    assert calibration.threshold is None
    assert calibration.retained_share == 0.0


def test_too_little_evidence_reaches_no_threshold_even_when_all_agree() -> None:
    assert calibrate([(-0.1, True)] * 58, target=0.95).threshold is None
    assert calibrate([(-0.1 - n / 100, True) for n in range(59)], target=0.95).threshold is not None


def test_ties_in_confidence_are_kept_or_dropped_together() -> None:
    results = [(-0.1 - n / 1000, True) for n in range(60)] + [(-0.9, True), (-0.9, False)]
    calibration = calibrate(results, target=0.95)
    assert calibration.threshold == pytest.approx(-0.159)
    assert calibration.retained_share == pytest.approx(60 / 62)


def test_out_of_fold_predictions_join_the_calibration() -> None:
    heldout = [
        Example(str(n), [{"role": "user", "content": f"q{n}"}], "billing", "") for n in range(20)
    ]
    out_of_fold = [(-0.05 - n / 1000, True) for n in range(100)]
    evaluation = evaluate(
        heldout,
        shape="label",
        student=lambda e: StudentAnswer(e.answer, -0.01),
        target=0.95,
        out_of_fold=out_of_fold,
    )
    alone = evaluate(
        heldout, shape="label", student=lambda e: StudentAnswer(e.answer, -0.01), target=0.95
    )
    assert alone.calibration.threshold is None  # 20 pairs cannot show 95%
    assert evaluation.calibration.pairs == 120
    assert evaluation.share_at_target == 1.0
    assert evaluation.agreement == 1.0  # the held-out figure stays the held-out split's
    summary = evaluation.summary()
    assert (summary.calibration_pairs, summary.calibration_out_of_fold) == (120, 100)


def test_evaluation_scores_student_and_base_against_the_teacher() -> None:
    heldout = [
        Example(
            str(n), [{"role": "user", "content": f"q{n}"}], "billing" if n % 2 else "refund", ""
        )
        for n in range(10)
    ]

    def student(example: Example) -> StudentAnswer:
        right = int(example.exchange_id) < 8
        return StudentAnswer(example.answer if right else "nonsense", -0.1 if right else -2.0)

    evaluation = evaluate(
        heldout,
        shape="label",
        student=student,
        base=lambda e: StudentAnswer("nonsense", -5.0),
        target=0.95,
        out_of_fold=[(-0.1, True)] * 90,
    )
    assert evaluation.agreement == pytest.approx(0.8)
    assert evaluation.base_agreement == 0.0
    assert evaluation.calibration.threshold == -0.1
    assert evaluation.share_at_target == pytest.approx(98 / 100)
    summary = evaluation.summary()
    assert summary.retained_agreement == 1.0
    assert (summary.threshold, summary.target, summary.examples) == (-0.1, 0.95, 10)
    assert summary.heldout == [(str(n), n < 8) for n in range(10)]


def test_evaluation_needs_heldout_examples() -> None:
    with pytest.raises(ValueError, match="held-out"):
        evaluate([], shape="label", student=lambda e: StudentAnswer("", 0.0))
