"""Curation: what becomes a training pair, what is held out, and why the rest is not."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from core.tables import Exchange
from distiller.curation import CurationConfig, curate, in_heldout, prompt_key, scrub

SYSTEM = {"role": "system", "content": "Classify the ticket into one intent."}


def exchange(
    number: int,
    text: str,
    answer: str | None,
    *,
    status: str = "ok",
    finish: str = "stop",
    served_by: str = "teacher",
    request: dict[str, Any] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> Exchange:
    message: dict[str, Any] = {"role": "assistant", "content": answer}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return Exchange(
        id=f"{number:032d}",
        task="t",
        served_by=served_by,
        status=status,
        http_status=200,
        request=request or {"model": "m", "messages": [SYSTEM, {"role": "user", "content": text}]},
        response={"choices": [{"index": 0, "message": message, "finish_reason": finish}]},
        latency_ms=1.0,
    )


def test_only_complete_successful_teacher_answers_are_kept_and_the_rest_counted() -> None:
    exchanges = [
        exchange(1, "a", "billing"),
        exchange(2, "b", "billing", status="error"),
        exchange(3, "c", "billing", status="aborted"),
        exchange(4, "d", "bill", finish="length"),
        exchange(5, "e", ""),
        exchange(6, "f", "refund", served_by="student"),
    ]
    curated = curate(exchanges, CurationConfig(near_duplicate_threshold=None))
    kept = [e.exchange_id for e in curated.train + curated.heldout]
    assert kept == [f"{1:032d}"]
    assert dict(curated.excluded) == {
        "error": 1,
        "aborted": 1,
        "finish_length": 1,
        "no_answer": 1,
        "student_answer": 1,
    }


def test_invalid_json_answer_to_a_json_request_never_reaches_training() -> None:
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_object"},
    }
    curated = curate(
        [exchange(1, "x", '{"broken": ', request=request)],
        CurationConfig(near_duplicate_threshold=None),
    )
    assert curated.excluded["invalid_json"] == 1
    assert not curated.train
    assert not curated.heldout


def test_exact_duplicates_are_removed_whatever_their_case_and_spacing() -> None:
    curated = curate(
        [exchange(1, "Where is  my card", "card"), exchange(2, "where is my card ", "card")],
        CurationConfig(near_duplicate_threshold=None),
    )
    assert curated.excluded["duplicate"] == 1


def test_near_duplicates_are_removed_by_embedding_similarity() -> None:
    vectors = {"user: refund please": [1.0, 0.0], "user: refund please!": [0.999, 0.0447]}

    def embed(texts: Any) -> Any:
        rows = [vectors.get(t, [0.0, 1.0]) for t in texts]
        return np.array(rows, dtype=np.float32)

    curated = curate(
        [
            exchange(1, "refund please", "refund"),
            exchange(2, "refund please!", "refund"),
            exchange(3, "card lost", "card"),
        ],
        CurationConfig(near_duplicate_threshold=0.99),
        embed=embed,
    )
    assert curated.excluded["near_duplicate"] == 1
    assert len(curated.train) + len(curated.heldout) == 2


def test_heldout_split_is_stable_and_about_a_tenth() -> None:
    keys = [f"user: question number {n}" for n in range(2000)]
    share = sum(in_heldout(k, 10) for k in keys) / len(keys)
    assert 0.08 < share < 0.12
    first = [exchange(n, f"question number {n}", "a") for n in range(300)]
    more = [exchange(n, f"question number {n}", "a") for n in range(600)]
    config = CurationConfig(near_duplicate_threshold=None, label_cap=10_000)
    heldout_small = {e.exchange_id for e in curate(first, config).heldout}
    heldout_large = {e.exchange_id for e in curate(more, config).heldout}
    assert heldout_small <= heldout_large, "data growing never moves a pair into training"


def test_label_tasks_cap_examples_per_label() -> None:
    exchanges = [exchange(n, f"q{n}", "billing") for n in range(50)]
    exchanges += [exchange(100 + n, f"r{n}", "refund") for n in range(5)]
    curated = curate(exchanges, CurationConfig(near_duplicate_threshold=None, label_cap=10))
    assert curated.shape == "label"
    train_labels = [e.answer for e in curated.train]
    assert train_labels.count("billing") == 10
    assert curated.excluded["label_cap"] > 0
    assert curated.labels == ["billing", "refund"]


def test_tool_call_answers_are_kept_as_json() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    curated = curate(
        [exchange(1, "x", None, finish="tool_calls", tool_calls=[call])],
        CurationConfig(near_duplicate_threshold=None, heldout_percent=1),
    )
    [example] = curated.train + curated.heldout
    assert json.loads(example.answer) == [{"name": "f", "arguments": '{"x": 1}'}]


def test_pii_is_scrubbed_from_training_text_when_asked() -> None:
    text = "Mail jane.doe@example.com or call +44 20 7946 0958, card 4111 1111 1111 1111"
    scrubbed = scrub(text + ", IBAN GB82 WEST 1234 5698 7654 32")
    for secret in ("jane.doe", "7946", "4111", "GB82"):
        assert secret not in scrubbed
    curated = curate(
        [exchange(1, text, "contact")],
        CurationConfig(near_duplicate_threshold=None, scrub_pii=True, heldout_percent=1),
    )
    [example] = curated.train + curated.heldout
    assert "<EMAIL>" in example.messages[-1]["content"]


def test_prompt_key_ignores_the_system_prompt() -> None:
    a = prompt_key([SYSTEM, {"role": "user", "content": "Hi"}])
    b = prompt_key([{"role": "system", "content": "other"}, {"role": "user", "content": "hi"}])
    assert a == b
