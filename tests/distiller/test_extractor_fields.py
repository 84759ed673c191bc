"""Reading a JSON task's fields: which are copied from the input, which come from a closed
set, which never change, and why a task is not extractor-shaped."""

from __future__ import annotations

import json
from typing import Any

from core.tables import StudentVersion
from distiller import tournament
from distiller.fields import read_fields
from distiller.pipeline import kinds_for

from fakes.extraction import FUNCTION, gold, messages, rows


def pairs(documents: list[tuple[str, dict[str, Any]]]) -> list[tuple[list[dict[str, Any]], str]]:
    return [(messages(text), json.dumps(document)) for text, document in documents]


def test_copied_values_are_spans_closed_sets_labels_and_fixed_values_constants() -> None:
    chosen = rows("train", 30)
    reading = read_fields(pairs([(r["text"], {"v": 1, **gold(r)}) for r in chosen]))
    kinds = {f.name: f.kind for f in reading.fields}
    assert kinds == {
        "v": "constant",
        "intent": "label",
        "city": "span",
        "state": "span",
    }
    assert reading.extractor_shaped
    assert reading.document()["fields"]["intent"] == {
        "kind": "label",
        "present": 1.0,
        "values": 2,
    }


def test_a_task_with_free_text_fields_is_not_extractor_shaped_and_says_why() -> None:
    chosen = rows("train", 30)
    reading = read_fields(
        pairs(
            [
                (
                    r["text"],
                    {"intent": r["intent"], "reply": f"Sure, I will see to {r['text']!r} now."},
                )
                for r in chosen
            ]
        )
    )
    assert not reading.extractor_shaped
    assert reading.reason is not None
    assert reading.reason.startswith("reply: free text")
    assert "found verbatim in the input" in reading.reason
    assert reading.document()["extractor"] is False


def test_values_the_input_does_not_contain_make_a_field_unsupported() -> None:
    chosen = rows("train", 30)
    reading = read_fields(pairs([(r["text"], {"code": f"id-{len(r['text'])}"}) for r in chosen]))
    [field] = reading.fields
    assert field.kind == "unsupported"
    assert "values the input does not contain" in (field.reason or "")


def test_arrays_of_objects_are_unsupported() -> None:
    chosen = rows("train", 10)
    reading = read_fields(
        pairs([(r["text"], {"slots": [{"n": s, "v": v} for s, v in r["slots"]]}) for r in chosen])
    )
    assert not reading.extractor_shaped
    assert "arrays and objects" in (reading.reason or "")


def test_calls_of_one_function_are_read_by_their_arguments() -> None:
    chosen = rows("train", 30)
    answers = [
        (
            messages(r["text"]),
            json.dumps([{"name": "parse_request", "arguments": json.dumps(gold(r))}]),
        )
        for r in chosen
    ]
    reading = read_fields(answers)
    assert reading.extractor_shaped
    assert reading.layout is not None
    assert reading.layout.function == FUNCTION
    assert {f.name: f.kind for f in reading.fields}["city"] == "span"


def test_calls_of_several_functions_are_not_extractor_shaped() -> None:
    chosen = rows("train", 10)
    answers = [
        (
            messages(r["text"]),
            json.dumps([{"name": f"f{n % 2}", "arguments": json.dumps(gold(r))}]),
        )
        for n, r in enumerate(chosen)
    ]
    reading = read_fields(answers)
    assert not reading.extractor_shaped
    assert "more than one function" in (reading.reason or "")


def test_an_extractor_competes_for_extractor_shaped_json_tasks_only() -> None:
    kinds = ["lora", "classifier", "extractor"]
    assert kinds_for("json", kinds, extractor_shaped=True) == ["extractor", "lora"]
    assert kinds_for("json", kinds, extractor_shaped=False) == ["lora"]
    assert kinds_for("label", kinds) == ["classifier", "lora"]
    assert kinds_for("json", ["extractor"], extractor_shaped=False) == []


def test_a_tied_tournament_goes_to_the_extractor_before_lora() -> None:
    versions = [
        StudentVersion(
            id=kind,
            task="t",
            number=n,
            kind=kind,
            base_model="-",
            adapter_name="-",
            adapter_path="-",
            confidence_threshold=-1.0,
            retained_share=0.8,
        )
        for n, kind in enumerate(["lora", "extractor"], start=1)
    ]
    assert tournament.winner(versions).kind == "extractor"
