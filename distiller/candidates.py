"""One candidate student of each kind, trained on a curated set and evaluated on its
held-out split: a LoRA adapter (any task), or a classifier head (label-like tasks).

Both are judged alike: agreement with the teacher under the task's metric, the confidence
threshold at which the answers kept reach the target agreement and the share they keep,
plus what a user pays for them: training time and time per request.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.agreement import Similarity
from core.classifier import Head
from core.embedding import Encoder
from core.evaluation import TrainingProfile, VersionEvaluation
from distiller.classifier import ClassifierConfig, majority_answer, train_classifier
from distiller.curation import CuratedSet, Example
from distiller.evaluation import Evaluation, StudentAnswer, evaluate
from distiller.inference import StudentModel
from distiller.training import LoraTrainingConfig, TrainingExample, TrainingProgress, train_lora

LATENCY_SAMPLES = 100  # held-out requests timed one by one for a classifier


@dataclass
class Candidate:
    """A trained, evaluated student not yet registered."""

    kind: str  # lora or classifier
    base_model: str  # the causal LM, or the sentence encoder
    adapter_name: str
    adapter_path: Path
    evaluation: Evaluation
    training_seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds per held-out request
    head: Head | None = None

    def version_evaluation(self, profile: TrainingProfile) -> VersionEvaluation:
        """What the version keeps: its held-out evaluation, its costs (training time, time
        per request) and what it was trained on."""
        ranked = sorted(self.latencies)
        costs = {
            "training_seconds": round(self.training_seconds, 2),
            "latency_p50_ms": round(1000 * statistics.median(ranked), 2) if ranked else None,
            "latency_p99_ms": round(1000 * ranked[int(0.99 * (len(ranked) - 1))], 2)
            if ranked
            else None,
        }
        return self.evaluation.summary().model_copy(update={**costs, "profile": profile})


@dataclass(frozen=True, slots=True)
class Judging:
    """How candidates are evaluated (the task's metric comes with the curated set)."""

    target: float
    similarity: Similarity | None = None
    text_threshold: float = 0.85


def lora_candidate(
    *,
    base_model: str,
    curated: CuratedSet,
    name: str,
    output_dir: Path,
    config: LoraTrainingConfig,
    judging: Judging,
    on_progress: Callable[[TrainingProgress], None] | None = None,
    on_trained: Callable[[int], None] | None = None,
) -> Candidate:
    """Fine-tune a LoRA adapter, then evaluate it (and the base model, the floor)."""
    result = train_lora(
        base_model=base_model,
        examples=[TrainingExample(e.messages, e.answer) for e in curated.train],
        config=config,
        output_dir=output_dir,
        on_progress=on_progress,
    )
    if on_trained is not None:
        on_trained(result.steps)
    model = StudentModel(base_model)
    model.load_adapter(name, str(result.adapter_dir))
    budget = _answer_budget(model, curated)
    latencies: list[float] = []

    def answer(adapter: str | None) -> Callable[[Example], StudentAnswer]:
        def respond(example: Example) -> StudentAnswer:
            began = time.perf_counter()
            generation = model.generate(example.messages, adapter=adapter, max_new_tokens=budget)
            if adapter is not None:
                latencies.append(time.perf_counter() - began)
            return StudentAnswer(generation.text, generation.mean_logprob)

        return respond

    evaluation = evaluate(
        curated.heldout,
        shape=curated.shape,
        student=answer(name),
        base=answer(None),
        target=judging.target,
        similarity=judging.similarity,
        text_threshold=judging.text_threshold,
    )
    return Candidate(
        kind="lora",
        base_model=base_model,
        adapter_name=name,
        adapter_path=result.adapter_dir,
        evaluation=evaluation,
        training_seconds=result.seconds,
        latencies=latencies,
    )


def classifier_candidate(
    *,
    curated: CuratedSet,
    name: str,
    output_path: Path,
    encoder: Encoder,
    encoder_name: str,
    judging: Judging,
    config: ClassifierConfig | None = None,
) -> Candidate:
    """Fit a classifier head, then evaluate it as the router will serve it: an input unlike
    the training set is never answered; the floor is always answering the commonest label."""
    result = train_classifier(
        curated.train, embed=encoder.encode, encoder=encoder_name, config=config
    )
    head = result.head
    head.save(output_path)
    vectors = encoder.encode([e.prompt_key for e in curated.heldout])
    predictions = {
        e.exchange_id: head.predict(vector)
        for e, vector in zip(curated.heldout, vectors, strict=True)
    }

    def student(example: Example) -> StudentAnswer:
        prediction = predictions[example.exchange_id]
        confidence = prediction.logprob if prediction.familiar else -math.inf
        return StudentAnswer(prediction.answer, confidence)

    floor = majority_answer(curated.train)
    evaluation = evaluate(
        curated.heldout,
        shape="label",
        student=student,
        base=lambda _example: StudentAnswer(floor, 0.0),
        target=judging.target,
    )
    return Candidate(
        kind="classifier",
        base_model=encoder_name,
        adapter_name=name,
        adapter_path=output_path,
        evaluation=evaluation,
        training_seconds=result.seconds,
        latencies=request_latencies(head, encoder, curated.heldout[:LATENCY_SAMPLES]),
        head=head,
    )


def request_latencies(head: Head, encoder: Encoder, examples: list[Example]) -> list[float]:
    """Seconds to answer each example alone, as a request is: embed, then the head."""
    seconds = []
    for example in examples:
        began = time.perf_counter()
        head.predict(encoder.encode([example.prompt_key])[0])
        seconds.append(time.perf_counter() - began)
    return seconds


def _answer_budget(model: StudentModel, curated: CuratedSet) -> int:
    """Enough new tokens for the longest teacher answer, and a little more."""
    longest = max(len(model.tokenizer.encode(e.answer)) for e in curated.train + curated.heldout)
    return min(512, longest + 8)
