"""Training a classifier student on CLINC150 intents with the bundled MiniLM."""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from core.classifier import BUNDLED_ENCODER, Head
from core.embedding import Encoder
from core.profile import prompt_key
from distiller.candidates import Judging, classifier_candidate
from distiller.classifier import fit_temperature, label_answers, train_classifier
from distiller.curation import CuratedSet, Example
from distiller.datasets import clinc150_banking20

INTENTS = clinc150_banking20()["intents"][:8]
SYSTEM = {"role": "system", "content": "Name the banking intent."}


def spoken(intent: str) -> str:
    """How the teacher writes an intent: not the dataset's identifier."""
    return intent.replace("_", " ").title()


def example(text: str, answer: str) -> Example:
    messages = [SYSTEM, {"role": "user", "content": text}]
    return Example(uuid.uuid4().hex, messages, answer, prompt_key(messages))


def examples(split: str, per_intent: int) -> list[Example]:
    rows = [row for row in clinc150_banking20()[split] if row[1] in INTENTS]
    random.Random(0).shuffle(rows)
    taken: dict[str, int] = {}
    chosen = []
    for text, intent in rows:
        if taken.get(intent, 0) < per_intent:
            taken[intent] = taken.get(intent, 0) + 1
            chosen.append(example(text, spoken(intent)))
    return chosen


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder()


@pytest.fixture(scope="module")
def head(encoder: Encoder) -> Head:
    """A head trained on 40 utterances of each of 8 intents."""
    result = train_classifier(examples("train", 40), embed=encoder.encode, encoder=BUNDLED_ENCODER)
    assert result.labels == len(INTENTS)
    assert result.examples == 40 * len(INTENTS)
    return result.head


def test_head_learns_intents_and_answers_in_the_teachers_words(
    encoder: Encoder, head: Head
) -> None:
    test = examples("test", 30)
    vectors = encoder.encode([e.prompt_key for e in test])
    predictions = [head.predict(v) for v in vectors]
    correct = [p.answer == e.answer for p, e in zip(predictions, test, strict=True)]
    assert sum(correct) / len(correct) >= 0.9
    assert {p.answer for p in predictions} <= {spoken(i) for i in INTENTS}


def test_probabilities_are_calibrated_on_new_inputs(encoder: Encoder, head: Head) -> None:
    test = examples("test", 30)
    predictions = [head.predict(v) for v in encoder.encode([e.prompt_key for e in test])]
    confidence = np.mean([p.probability for p in predictions])
    accuracy = np.mean([p.answer == e.answer for p, e in zip(predictions, test, strict=True)])
    assert abs(confidence - accuracy) < 0.06


def test_inputs_of_no_known_intent_are_mostly_unfamiliar(encoder: Encoder, head: Head) -> None:
    out_of_scope = [example(text, "") for text in clinc150_banking20()["oos"]]
    vectors = encoder.encode([e.prompt_key for e in out_of_scope])
    unfamiliar = [not head.predict(v).familiar for v in vectors]
    assert sum(unfamiliar) / len(unfamiliar) >= 0.7
    in_scope = encoder.encode([e.prompt_key for e in examples("test", 30)])
    familiar_test = [head.predict(v).familiar for v in in_scope]
    assert sum(familiar_test) / len(familiar_test) >= 0.95


def test_candidate_is_evaluated_on_the_held_out_split_with_a_calibrated_threshold(
    encoder: Encoder, tmp_path: Path
) -> None:
    curated = CuratedSet(
        shape="label",
        train=examples("train", 40),
        heldout=examples("val", 10),
        excluded=Counter(),
    )
    candidate = classifier_candidate(
        curated=curated,
        name="intents-v1",
        output_path=tmp_path / "head.npz",
        encoder=encoder,
        encoder_name=BUNDLED_ENCODER,
        judging=Judging(target=0.95),
    )
    evaluation = candidate.evaluation
    assert evaluation.examples == len(curated.heldout)
    assert evaluation.agreement >= 0.9
    assert evaluation.base_agreement == pytest.approx(1 / len(INTENTS), abs=0.05)
    assert evaluation.calibration.threshold is not None
    assert evaluation.calibration.threshold <= 0.0
    assert evaluation.calibration.retained_agreement >= 0.95
    assert evaluation.share_at_target >= 0.8
    assert candidate.adapter_path.is_file()
    assert len(candidate.latencies) == len(curated.heldout)


def test_a_label_is_answered_in_its_most_frequent_spelling() -> None:
    answers, labels = label_answers(
        [example("a", "Refund"), example("b", "refund."), example("c", "Refund"), example("d", "x")]
    )
    assert answers == ["Refund", "x"]
    assert labels == [0, 0, 0, 1]


def test_one_distinct_answer_is_no_classification_task(encoder: Encoder) -> None:
    with pytest.raises(ValueError, match="two distinct"):
        train_classifier(
            [example(f"q{n}", "yes") for n in range(10)],
            embed=encoder.encode,
            encoder=BUNDLED_ENCODER,
        )


def test_temperature_fit_recovers_the_temperature_labels_were_drawn_at() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(4000, 5)).astype(np.float32)
    scaled = logits / 2.0
    probabilities = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(5, p=row) for row in probabilities], dtype=np.int64)
    assert math.isclose(fit_temperature(logits, targets), 2.0, rel_tol=0.15)
