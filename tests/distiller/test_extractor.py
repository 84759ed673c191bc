"""Training an extractor student: MiniLM fine-tuned to copy each span field's value out of
the input and to pick each label field's value, calibrated, stored, and read back."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.classifier import BUNDLED_ENCODER
from core.embedding import default_embedding_model
from core.extractor import Extractor, source_text
from distiller.candidates import Candidate, Judging, extractor_candidate
from distiller.curation import CuratedSet
from distiller.extractor import ExtractorConfig
from distiller.fields import read_fields
from distiller.training import TrainingProgress

from fakes.extraction import SLOTS, examples, rows

CONFIG = ExtractorConfig(epochs=3, min_steps=40)


@dataclass
class Trained:
    candidate: Candidate
    curated: CuratedSet
    progress: list[TrainingProgress]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """An extractor on 60 utterances of each of two intents, judged on 50 more of each."""
    train, heldout = examples(rows("train", 60)), examples(rows("validate", 50))
    reading = read_fields([(e.messages, e.answer) for e in train + heldout])
    curated = CuratedSet("json", train, heldout, Counter(), fields=reading)
    progress: list[TrainingProgress] = []
    candidate = extractor_candidate(
        curated=curated,
        name="parser-v1",
        output_path=tmp_path_factory.mktemp("extractor") / "extractor.bin",
        encoder_path=default_embedding_model(),
        encoder_name=BUNDLED_ENCODER,
        judging=Judging(target=0.9),
        config=CONFIG,
        on_progress=progress.append,
    )
    return Trained(candidate, curated, progress)


def stored(trained: Trained) -> Extractor:
    assert trained.candidate.stored is not None
    return Extractor.from_bytes(trained.candidate.stored, encoder_path=default_embedding_model())


def test_the_extractor_agrees_with_the_teacher_on_most_heldout_answers(trained: Trained) -> None:
    evaluation = trained.candidate.evaluation
    assert evaluation.metric == "json"
    assert evaluation.agreement >= 0.65  # exact: every field right (0.77 measured)
    assert evaluation.mean_score >= 0.75  # field F1
    assert evaluation.base_agreement is not None
    assert evaluation.base_agreement < evaluation.agreement


def test_every_copied_value_is_the_inputs_own_text(trained: Trained) -> None:
    extractor = stored(trained)
    texts = [source_text(e.messages) for e in trained.curated.heldout]
    for text, extraction in zip(texts, extractor.extract(texts), strict=True):
        document = json.loads(extraction.answer)
        for slot in SLOTS:
            if slot in document:
                assert document[slot] in text


def test_the_stored_extractor_answers_as_it_was_judged(trained: Trained) -> None:
    extractor = stored(trained)
    heldout = trained.curated.heldout[:20]
    answers = extractor.extract([source_text(e.messages) for e in heldout])
    judged = {d["exchange_id"]: d for d in trained.candidate.evaluation.details}
    for example, extraction in zip(heldout, answers, strict=True):
        assert extraction.logprob == pytest.approx(judged[example.exchange_id]["confidence"])
        assert (extraction.answer == example.answer) == judged[example.exchange_id]["agrees"]


def test_confidence_is_a_log_probability_that_ranks_right_answers_first(trained: Trained) -> None:
    details = trained.candidate.evaluation.details
    assert all(d["confidence"] <= 0 for d in details)
    right = [d["confidence"] for d in details if d["agrees"]]
    wrong = [d["confidence"] for d in details if not d["agrees"]]
    assert wrong, "some held-out answers should be wrong, to rank"
    assert sum(right) / len(right) > sum(wrong) / len(wrong)


def test_training_reports_its_progress_step_by_step(trained: Trained) -> None:
    steps = [p.step for p in trained.progress]
    assert steps == list(range(1, len(steps) + 1))
    assert trained.progress[-1].step == trained.progress[-1].total_steps
    assert trained.progress[-1].eta_seconds == 0.0
    assert trained.progress[-1].loss < trained.progress[0].loss


def test_the_model_is_stored_without_the_encoders_frozen_layers(trained: Trained) -> None:
    assert trained.candidate.stored is not None
    assert len(trained.candidate.stored) < 20_000_000
    assert Path(trained.candidate.adapter_path).read_bytes() == trained.candidate.stored
