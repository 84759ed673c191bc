"""What an app's feedback and its clients' retries do to curation: a bad answer and a
suspect one are no training pairs (counted under their reason), a correction trains in
place of the answer it corrects."""

from __future__ import annotations

import json
from typing import Any

from core.tables import Exchange
from distiller.curation import CuratedSet, CurationConfig, curate

SYSTEM = {"role": "system", "content": "Classify the ticket into one intent."}


def completion(message: dict[str, Any]) -> dict[str, Any]:
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


def exchange(number: int, text: str, answer: str, **fields: Any) -> Exchange:
    return Exchange(
        id=f"{number:032d}",
        task="t",
        served_by=fields.pop("served_by", "teacher"),
        status="ok",
        http_status=200,
        request={"model": "m", "messages": [SYSTEM, {"role": "user", "content": text}]},
        response=completion({"role": "assistant", "content": answer}),
        latency_ms=1.0,
        **fields,
    )


def curated(*exchanges: Exchange) -> CuratedSet:
    return curate(exchanges, CurationConfig(heldout_percent=0, near_duplicate_threshold=None))


def answers(result: CuratedSet) -> list[tuple[str, str]]:
    return [(e.exchange_id[-1], e.answer) for e in result.train]


def test_an_answer_rated_bad_is_no_training_pair() -> None:
    result = curated(exchange(1, "a", "billing", feedback="bad"), exchange(2, "b", "refund"))
    assert answers(result) == [("2", "refund")]
    assert dict(result.excluded) == {"feedback_bad": 1}


def test_a_suspect_answer_is_no_training_pair_unless_the_app_rated_it_good() -> None:
    result = curated(
        exchange(1, "a", "billing", suspect="retry"),
        exchange(2, "b", "billing", suspect="reask"),
        exchange(3, "c", "refund", suspect="retry", feedback="good"),
    )
    assert answers(result) == [("3", "refund")]
    assert dict(result.excluded) == {"suspect_retry": 1, "suspect_reask": 1}


def test_a_correction_trains_in_place_of_the_answer_it_corrects() -> None:
    corrected = completion({"role": "assistant", "content": "refund"})
    result = curated(
        exchange(1, "a", "billing", feedback="bad", corrected_response=corrected),
        exchange(
            2, "b", "billing", served_by="student", feedback="bad", corrected_response=corrected
        ),
    )
    assert answers(result) == [("1", "refund"), ("2", "refund")]


def test_a_corrected_answer_wins_over_an_earlier_one_to_the_same_prompt() -> None:
    corrected = completion({"role": "assistant", "content": "refund"})
    result = curated(
        exchange(1, "same", "billing"),
        exchange(2, "same", "billing", feedback="bad", corrected_response=corrected),
    )
    assert answers(result) == [("2", "refund")]
    assert dict(result.excluded) == {"duplicate": 1}


def test_a_corrected_tool_call_trains_on_its_arguments() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "route", "arguments": "{}"}}
    fixed = {**call, "function": {"name": "route", "arguments": '{"intent": "refund"}'}}
    wrong = exchange(1, "a", "", feedback="bad")
    wrong.response = completion({"role": "assistant", "content": None, "tool_calls": [call]})
    wrong.corrected_response = completion(
        {"role": "assistant", "content": None, "tool_calls": [fixed]}
    )
    [example] = curated(wrong).train
    assert json.loads(example.answer) == [{"name": "route", "arguments": '{"intent": "refund"}'}]
