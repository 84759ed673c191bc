"""An extractor's answer is written the way its teacher writes: key order, absent fields,
serialisation."""

from __future__ import annotations

import json
from typing import Any

from core.answer_layout import ABSENT, Layout
from distiller.fields import read_fields

from fakes.extraction import gold, messages, rows


def layout_of(documents: list[tuple[str, str]]) -> Layout:
    reading = read_fields([(messages(text), answer) for text, answer in documents])
    assert reading.layout is not None
    return reading.layout


def test_the_teachers_serialisation_is_reproduced_byte_for_byte() -> None:
    chosen = rows("train", 20)
    for options in ({}, {"indent": 2}, {"separators": (",", ":")}, {"ensure_ascii": False}):
        answers = [(r["text"], json.dumps(gold(r), **options)) for r in chosen]
        layout = layout_of(answers)
        for row, (_, answer) in zip(chosen, answers, strict=True):
            values: dict[tuple[str, ...], Any] = {(k,): v for k, v in gold(row).items()}
            assert layout.render(values) == answer


def test_absent_fields_are_written_as_the_teacher_writes_them() -> None:
    chosen = rows("train", 20)
    omitted = layout_of([(r["text"], json.dumps(gold(r))) for r in chosen])
    nulls = layout_of([(r["text"], json.dumps(gold(r, nulls=True))) for r in chosen])
    empty = layout_of(
        [
            (r["text"], json.dumps({k: v or "" for k, v in gold(r, nulls=True).items()}))
            for r in chosen
        ]
    )
    values: dict[tuple[str, ...], Any] = {("intent",): "GetWeather", ("city",): "Paris"}
    assert json.loads(omitted.render(values)) == {"intent": "GetWeather", "city": "Paris"}
    assert json.loads(nulls.render(values)) == {
        "intent": "GetWeather",
        "city": "Paris",
        "state": None,
    }
    assert json.loads(empty.render({**values, ("state",): ABSENT}))["state"] == ""


def test_key_order_follows_the_teacher_fixed_or_by_position_in_the_input() -> None:
    fixed = [
        ("fly from Oslo to Rome", {"to": "Rome", "from": "Oslo"}),
        ("fly to Rome from Oslo", {"to": "Rome", "from": "Oslo"}),
        ("from Bonn to Pisa", {"to": "Pisa", "from": "Bonn"}),
    ]
    layout = layout_of([(t, json.dumps(d)) for t, d in fixed])
    fixed_values: dict[tuple[str, ...], Any] = {("from",): "Oslo", ("to",): "Rome"}
    assert layout.render(fixed_values) == '{"to": "Rome", "from": "Oslo"}'

    by_input = [
        ("fly from Oslo to Rome", {"from": "Oslo", "to": "Rome"}),
        ("fly to Rome from Oslo", {"to": "Rome", "from": "Oslo"}),
        ("from Bonn to Pisa", {"from": "Bonn", "to": "Pisa"}),
    ]
    layout = layout_of([(t, json.dumps(d)) for t, d in by_input])
    values: dict[tuple[str, ...], Any] = {("from",): "Oslo", ("to",): "Rome"}
    assert layout.render(values, {("to",): 4, ("from",): 12}) == '{"to": "Rome", "from": "Oslo"}'
    assert layout.render(values, {("from",): 4, ("to",): 12}) == '{"from": "Oslo", "to": "Rome"}'


def test_nested_objects_keep_their_shape_when_empty() -> None:
    chosen = rows("train", 20)
    answers = [
        (
            r["text"],
            json.dumps(
                {"intent": r["intent"], "slots": {k: v for k, v in r["slots"] if k == "city"}}
            ),
        )
        for r in chosen
    ]
    layout = layout_of(answers)
    assert layout.render({("intent",): "GetWeather"}) == '{"intent": "GetWeather", "slots": {}}'
    assert Layout.from_document(layout.document()).render(
        {("intent",): "X", ("slots", "city"): "Rome"}
    ) == ('{"intent": "X", "slots": {"city": "Rome"}}')
