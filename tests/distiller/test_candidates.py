"""A LoRA candidate is judged as it will serve: under each request's response_format, so
the gate's agreement is the agreement of the constrained answers the student would give."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from distiller import candidates
from distiller.candidates import Judging, lora_candidate
from distiller.curation import CuratedSet, Example
from distiller.inference import StudentModel
from distiller.training import LoraTrainingConfig

FORMAT = {"type": "json_object"}


def example(number: int) -> Example:
    messages = [{"role": "user", "content": f"order {number} arrived broken"}]
    answer = json.dumps({"order": str(number), "issue": "broken"})
    return Example(f"ex{number}", messages, answer, f"order {number}", FORMAT)


def test_a_lora_candidate_answers_the_held_out_pairs_under_their_response_format(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers: list[tuple[Any, str]] = []

    class Recording(StudentModel):
        def generate(self, messages: Any, **options: Any) -> Any:
            generation = super().generate(messages, **options)
            answers.append((options.get("response_format"), generation.text))
            return generation

    monkeypatch.setattr(candidates, "StudentModel", Recording)
    curated = CuratedSet(
        "json", [example(n) for n in range(8)], [example(100 + n) for n in range(5)], Counter()
    )

    lora_candidate(
        base_model=str(tiny_model),
        curated=curated,
        name="orders-v1",
        output_dir=tmp_path / "adapter",
        config=LoraTrainingConfig(epochs=1, batch_size=4, max_length=128, bf16=False),
        judging=Judging(target=0.9),
    )

    assert len(answers) == 10  # the student and the base, on each held-out pair
    for response_format, text in answers:
        assert response_format == FORMAT
        assert isinstance(json.loads(text), dict)  # the tiny model's free answers are not JSON
