"""Held-out evaluation: the student against the teacher, the base model as the floor, and
the confidence calibration (the confidence at or above which the student's answers reach
the target agreement with a statistical guarantee, and the share of traffic that leaves
it). Confidence is a log-probability: a LoRA student's mean per answer token, a
classifier's of its label.

Calibration reads every prediction whose answer is known and which the student was not
trained on: the held-out split, and, for a kind that can afford it, out-of-fold
predictions over the whole curated set (a classifier's folds cost seconds; a LoRA
student's would cost one more fine-tuning per fold, minutes to hours each on a CPU, so
LoRA is calibrated on the held-out split alone)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.agreement import Shape, Similarity, score
from core.evaluation import VersionEvaluation
from core.intervals import CONFIDENCE, lower_bound, reaches
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
    lower_bound: float = 0.0  # one-sided Clopper-Pearson bound on retained agreement
    pairs: int = 0  # predictions the threshold was chosen on


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
    out_of_fold: int = 0  # out-of-fold predictions calibration read besides the held-out

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
            calibration_pairs=self.calibration.pairs,
            calibration_out_of_fold=self.out_of_fold,
            calibration_lower_bound=self.calibration.lower_bound,
            heldout=[(d["exchange_id"], d["agrees"]) for d in self.details],
        )


def calibrate(
    results: Sequence[tuple[float, bool]], target: float, *, confidence: float = CONFIDENCE
) -> Calibration:
    """The lowest confidence threshold (the largest retained share) whose retained answers
    reach ``target`` with the guarantee: the one-sided Clopper-Pearson lower bound, at
    ``confidence`` (95%), on their agreement is at or above ``target``. A threshold chosen
    on the point estimate would be too loose about half the time; this one is too loose
    at most 5% of the time (for one threshold: choosing among many spends a little of it).

    ``results`` are (confidence, agrees) pairs. Answers are retained from the most
    confident down; the threshold is the confidence of the last one retained. An answer
    of confidence ``-inf`` (no log-probabilities, or an input the student declines) is
    never retained. Fewer than about 60 agreeing pairs can never show 95% this way.
    """
    ranked = sorted(results, key=lambda pair: pair[0], reverse=True)
    best: Calibration = Calibration(None, 0.0, 0.0, 0.0, len(ranked))
    chosen: tuple[float, int, int] | None = None
    agreed = 0
    for count, (value, agrees) in enumerate(ranked, start=1):
        agreed += agrees
        if value == -math.inf:
            break
        # A tie in confidence cannot be split by a threshold: decide at the tie's end.
        if count < len(ranked) and ranked[count][0] == value:
            continue
        if agreed / count >= target and reaches(agreed, count, target, confidence):
            chosen = (value, agreed, count)
    if chosen is not None:
        value, agreed, count = chosen
        best = Calibration(
            value,
            count / len(ranked),
            agreed / count,
            lower_bound(agreed, count, confidence),
            len(ranked),
        )
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
    out_of_fold: Sequence[tuple[float, bool]] = (),
) -> Evaluation:
    """Score the student (and the base model) on every held-out example, and calibrate on
    those scores together with ``out_of_fold`` (confidence, agrees) predictions of the
    training pairs, each made by a student not trained on it."""
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
        calibration=calibrate([*results, *out_of_fold], target),
        target=target,
        mean_score=sum(scores) / len(scores),
        details=details,
        out_of_fold=len(out_of_fold),
    )
