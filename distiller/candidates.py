"""One candidate student of each kind, trained on a curated set and evaluated on its
held-out split: a LoRA adapter (any task), a classifier head (label-like tasks), or an
extractor (extractor-shaped JSON tasks).

Both are judged alike: agreement with the teacher under the task's metric, the confidence
threshold at which the answers kept reach the target agreement and the share they keep,
plus what a user pays for them: training time and time per request.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.agreement import Similarity, score
from core.answer_layout import answer_document
from core.classifier import Head
from core.embedding import Encoder
from core.evaluation import TrainingProfile, VersionEvaluation
from core.extractor import Extractor, source_text
from distiller.classifier import ClassifierConfig, majority_answer, train_classifier
from distiller.curation import CuratedSet, Example
from distiller.evaluation import Evaluation, StudentAnswer, evaluate
from distiller.extractor import ExtractorConfig, train_extractor
from distiller.inference import ResponseFormatError, StudentModel
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
    stored: bytes | None = None  # what the store keeps for a kind served in the proxy

    @property
    def student_head(self) -> bytes | None:
        """The bytes of ``student_heads`` for this version (a classifier's head, an
        extractor's model), or None for a kind served elsewhere."""
        return self.head.to_bytes() if self.head is not None else self.stored

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
    """Fine-tune a LoRA adapter, then evaluate it (and the base model, the floor) answering
    as it will serve: under each request's ``response_format``. It is calibrated on the
    held-out split alone: out-of-fold predictions would take one more
    fine-tuning per fold (five folds: five times the training time)."""
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
            try:
                generation = model.generate(
                    example.messages,
                    adapter=adapter,
                    max_new_tokens=budget,
                    response_format=example.response_format,
                )
            except ResponseFormatError:  # one the grammar cannot hold: judged unconstrained
                generation = model.generate(
                    example.messages, adapter=adapter, max_new_tokens=budget
                )
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
        out_of_fold=result.out_of_fold,
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


def extractor_candidate(
    *,
    curated: CuratedSet,
    name: str,
    output_path: Path,
    encoder_path: str,
    encoder_name: str,
    judging: Judging,
    config: ExtractorConfig | None = None,
    on_progress: Callable[[TrainingProgress], None] | None = None,
) -> Candidate:
    """Fine-tune an extractor, then evaluate it as the router will serve it (the model read
    back from the bytes the store keeps), on the answer documents: a call's arguments, or
    the message content. The floor is the answer with every varying field left empty."""
    if curated.fields is None:
        raise ValueError("an extractor needs the task's field reading")
    result = train_extractor(
        curated.train,
        curated.fields,
        encoder_path=encoder_path,
        encoder=encoder_name,
        config=config,
        on_progress=on_progress,
    )
    stored = result.extractor.to_bytes()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_bytes(stored)
    served = Extractor.from_bytes(stored, encoder_path=encoder_path)
    heldout = [_as_document(e) for e in curated.heldout]
    texts = [source_text(e.messages) for e in heldout]
    answers = {e.exchange_id: x for e, x in zip(heldout, _extract_all(served, texts), strict=True)}
    floor = served.layout.render({p: v for p, v in _constants(served).items()})
    evaluation = evaluate(
        heldout,
        shape="json",
        student=lambda e: StudentAnswer(
            answers[e.exchange_id].answer, answers[e.exchange_id].logprob
        ),
        base=lambda _example: StudentAnswer(floor, 0.0),
        target=judging.target,
        out_of_fold=_calibration_results(served, result.calibration),
    )
    latencies = []
    for text in texts[:LATENCY_SAMPLES]:
        began = time.perf_counter()
        served.extract([text])
        latencies.append(time.perf_counter() - began)
    return Candidate(
        kind="extractor",
        base_model=encoder_name,
        adapter_name=name,
        adapter_path=output_path,
        evaluation=evaluation,
        training_seconds=result.seconds,
        latencies=latencies,
        stored=stored,
    )


def _as_document(example: Example) -> Example:
    """The example with its answer as the JSON document an extractor writes (a call's
    arguments, or the content)."""
    parsed = answer_document(example.answer)
    return replace(example, answer=parsed[1]) if parsed is not None else example


def _extract_all(extractor: Extractor, texts: list[str]) -> list[Any]:
    found = []
    for first in range(0, len(texts), 32):
        found += extractor.extract(texts[first : first + 32])
    return found


def _constants(extractor: Extractor) -> dict[Any, Any]:
    return {path: json.loads(value) for path, value in extractor.spec.constants}


def _calibration_results(extractor: Extractor, examples: list[Example]) -> list[tuple[float, bool]]:
    """(confidence, agrees) on the training pairs kept out of training to calibrate."""
    documents = [_as_document(e) for e in examples]
    found = _extract_all(extractor, [source_text(e.messages) for e in documents])
    return [
        (x.logprob, score("json", x.answer, e.answer).agrees)
        for x, e in zip(found, documents, strict=True)
    ]
