"""Held-out evaluation: the student against the teacher, the base model as the floor, and
the confidence calibration (the confidence at or above which the student's answers reach
the target agreement, and the share of traffic that leaves it). Confidence is a
log-probability: a LoRA student's mean per answer token, a classifier's of its label."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.agreement import Shape, Similarity, score
from core.evaluation import VersionEvaluation
from distiller.curation import Example


@dataclass(frozen=True, slots=True)
class StudentAnswer:
    text: str
    confidence: float  # mean token log-probability, or a classifier's calibrated log p


@dataclass(frozen=True, slots=True)
class Calibration:
    threshold: float | None  # None: no threshold reaches the target
    retained_share: float
    retained_agreement: float


@dataclass
class Evaluation:
    metric: Shape
    examples: int
    agreement: float
    base_agreement: float | None
    calibration: Calibration
    target: float
    mean_score: float
    details: list[dict[str, Any]] = field(default_factory=list)

    @property
    def share_at_target(self) -> float:
        return self.calibration.retained_share if self.calibration.threshold is not None else 0.0

    def summary(self) -> VersionEvaluation:
        """The figures a version keeps: of the per-example details, only which held-out
        inputs agreed."""
        return VersionEvaluation(
            metric=self.metric,
            examples=self.examples,
            agreement=self.agreement,
            base_agreement=self.base_agreement,
            mean_score=self.mean_score,
            target=self.target,
            share_at_target=self.share_at_target,
            threshold=self.calibration.threshold,
            retained_share=self.calibration.retained_share,
            retained_agreement=self.calibration.retained_agreement,
            heldout=[(d["exchange_id"], d["agrees"]) for d in self.details],
        )


def calibrate(results: Sequence[tuple[float, bool]], target: float) -> Calibration:
    """The lowest confidence threshold whose retained answers agree at ``target`` or more.

    ``results`` are (confidence, agrees) pairs. Answers are retained from the most
    confident down; the threshold is the confidence of the last one retained. An answer
    of confidence ``-inf`` (no log-probabilities, or an input the student declines) is
    never retained.
    """
    ranked = sorted(results, key=lambda pair: pair[0], reverse=True)
    best: Calibration = Calibration(None, 0.0, 0.0)
    agreed = 0
    for count, (confidence, agrees) in enumerate(ranked, start=1):
        agreed += agrees
        if confidence == -math.inf:
            break
        # A tie in confidence cannot be split by a threshold: decide at the tie's end.
        if count < len(ranked) and ranked[count][0] == confidence:
            continue
        if agreed / count >= target:
            best = Calibration(confidence, count / len(ranked), agreed / count)
    return best


def evaluate(
    heldout: Sequence[Example],
    *,
    shape: Shape,
    student: Callable[[Example], StudentAnswer],
    base: Callable[[Example], StudentAnswer] | None = None,
    target: float = 0.95,
    similarity: Similarity | None = None,
    text_threshold: float = 0.85,
    on_progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Score the student (and the base model) on every held-out example."""
    if not heldout:
        raise ValueError("no held-out examples to evaluate on")
    results: list[tuple[float, bool]] = []
    scores: list[float] = []
    base_agreed = 0
    details = []
    for number, example in enumerate(heldout, start=1):
        answer = student(example)
        result = score(
            shape, answer.text, example.answer, similarity=similarity, text_threshold=text_threshold
        )
        results.append((answer.confidence, result.agrees))
        scores.append(result.value)
        detail: dict[str, Any] = {
            "exchange_id": example.exchange_id,
            "agrees": result.agrees,
            "score": result.value,
            "confidence": answer.confidence,
        }
        if base is not None:
            base_text = base(example).text
            base_result = score(
                shape,
                base_text,
                example.answer,
                similarity=similarity,
                text_threshold=text_threshold,
            )
            base_agreed += base_result.agrees
            detail["base_agrees"] = base_result.agrees
        details.append(detail)
        if on_progress is not None:
            on_progress(number, len(heldout))
    return Evaluation(
        metric=shape,
        examples=len(heldout),
        agreement=sum(agrees for _, agrees in results) / len(results),
        base_agreement=base_agreed / len(heldout) if base is not None else None,
        calibration=calibrate(results, target),
        target=target,
        mean_score=sum(scores) / len(scores),
        details=details,
    )
