"""Held-out evaluation and confidence calibration."""

from __future__ import annotations

import pytest

from distiller.curation import Example
from distiller.evaluation import StudentAnswer, calibrate, evaluate


def test_calibration_finds_the_lowest_threshold_that_reaches_the_target() -> None:
    results = [(-0.1, True), (-0.2, True), (-0.3, True), (-0.4, False), (-0.5, True), (-0.9, False)]
    calibration = calibrate(results, target=0.75)
    assert calibration.threshold == -0.5
    assert calibration.retained_share == pytest.approx(5 / 6)
    assert calibration.retained_agreement == pytest.approx(4 / 5)


def test_calibration_without_any_reachable_threshold() -> None:
    calibration = calibrate([(-0.1, False), (-0.2, True)], target=0.95)
    assert calibration.threshold is None
    assert calibration.retained_share == 0.0


def test_ties_in_confidence_are_kept_or_dropped_together() -> None:
    calibration = calibrate([(-0.1, True), (-0.2, True), (-0.2, False)], target=0.9)
    assert calibration.threshold == -0.1
    assert calibration.retained_share == pytest.approx(1 / 3)


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
    )
    assert evaluation.agreement == pytest.approx(0.8)
    assert evaluation.base_agreement == 0.0
    assert evaluation.calibration.threshold == -0.1
    assert evaluation.share_at_target == pytest.approx(0.8)
    summary = evaluation.summary()
    assert summary.retained_agreement == 1.0
    assert (summary.threshold, summary.target, summary.examples) == (-0.1, 0.95, 10)
    assert summary.heldout == [(str(n), n < 8) for n in range(10)]


def test_evaluation_needs_heldout_examples() -> None:
    with pytest.raises(ValueError, match="held-out"):
        evaluate([], shape="label", student=lambda e: StudentAnswer("", 0.0))
