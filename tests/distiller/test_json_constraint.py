"""Decoding held to a JSON schema: whatever the model's weights, its answers parse and
validate; documents the schema accepts are never refused; what is outside the supported
subset is still JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from distiller.inference import ResponseFormatError, StudentModel
from distiller.json_constraint import JsonConstraint, grammar_for
from distiller.json_grammar import compile_schema
from distiller.json_machine import accepting, advance_bytes, start

MESSAGES = [{"role": "user", "content": "play some music by Queen in Paris tomorrow"}]

INTENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "intent": {"enum": ["PlayMusic", "GetWeather", "BookRestaurant"]},
        "slots": {
            "type": "object",
            "properties": {
                "artist": {"type": "string"},
                "city": {"type": "string"},
                "party_size": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
    "required": ["intent", "slots"],
    "additionalProperties": False,
}

SCALARS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "amount": {"type": "number"},
        "count": {"type": "integer"},
        "urgent": {"type": "boolean"},
        "note": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "code": {"type": "string", "minLength": 2, "maxLength": 4},
        "level": {"enum": [1, 2, 10, None]},
    },
    "required": ["amount", "count", "urgent", "note", "tags", "code", "level"],
}


class Priority(StrEnum):
    low = "low"
    high = "high"


class Address(BaseModel):
    city: str
    postcode: str | None = None


class Ticket(BaseModel):
    """Pydantic's own schema: $defs, $ref, anyOf with null, enums, nested models."""

    priority: Priority
    address: Address
    amounts: list[float]


def json_schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


@pytest.fixture(scope="module")
def student(tiny_model: Path) -> Iterator[StudentModel]:
    model = StudentModel(tiny_model)
    yield model
    model.close()


@pytest.mark.parametrize(
    "schema",
    [INTENT_SCHEMA, SCALARS_SCHEMA, Ticket.model_json_schema()],
    ids=["intent", "scalars", "pydantic"],
)
def test_untrained_model_answers_parse_and_validate(
    student: StudentModel, schema: dict[str, Any]
) -> None:
    for seed in range(4):
        generation = student.generate(
            MESSAGES,
            adapter=None,
            max_new_tokens=80,
            temperature=1.0,
            seed=seed,
            response_format=json_schema_format(schema),
        )
        assert generation.finish_reason == "stop"
        jsonschema.validate(json.loads(generation.text), schema)


def test_json_object_answers_are_json_objects(student: StudentModel) -> None:
    for seed in range(4):
        generation = student.generate(
            MESSAGES,
            adapter=None,
            max_new_tokens=40,
            temperature=1.0,
            seed=seed,
            response_format={"type": "json_object"},
        )
        assert isinstance(json.loads(generation.text), dict)


def test_answer_is_closed_in_time_when_tokens_run_short(student: StudentModel) -> None:
    # The smallest valid document is 34 bytes; 40 tokens leave little room to wander.
    for seed in range(4):
        generation = student.generate(
            MESSAGES,
            adapter=None,
            max_new_tokens=40,
            temperature=1.0,
            seed=seed,
            response_format=json_schema_format(INTENT_SCHEMA),
        )
        assert generation.completion_tokens <= 40
        jsonschema.validate(json.loads(generation.text), INTENT_SCHEMA)


def test_greedy_answer_with_logprobs_reports_the_models_own_probabilities(
    student: StudentModel,
) -> None:
    generation = student.generate(
        MESSAGES,
        adapter=None,
        max_new_tokens=60,
        top_logprobs=2,
        response_format=json_schema_format(INTENT_SCHEMA),
    )
    json.loads(generation.text)
    assert all(len(t["top_logprobs"]) == 2 for t in generation.tokens)
    # Tokens forced by the schema keep the untrained model's doubt: not all log-prob 0.
    assert any(t["logprob"] < -0.01 for t in generation.tokens)


def test_every_token_of_a_valid_document_is_allowed(student: StudentModel) -> None:
    tokenizer = student.tokenizer
    grammar = grammar_for(json_schema_format(INTENT_SCHEMA), tokenizer, len(tokenizer))
    assert grammar is not None
    documents = [
        '{"intent": "PlayMusic", "slots": {"artist": "Queen", "city": "Paris"}}',
        '{\n  "slots": {"city": "New York", "party_size": 4},\n  "intent": "BookRestaurant"\n}',
        '{"intent":"GetWeather","slots":{"city":"Saint-\\u00c9tienne \\"centre\\""}}',
    ]
    for document in documents:
        constraint = JsonConstraint(grammar, frozenset({tokenizer.eos_token_id}))
        for token in tokenizer(document, add_special_tokens=False)["input_ids"]:
            assert constraint.allowed(200)[token]
            constraint.advance(token)
        assert constraint.allowed(200)[tokenizer.eos_token_id]


@pytest.mark.parametrize(
    "document",
    [
        '{"intent": "PlayMusic"}',  # a required property missing
        '{"intent": "Dance", "slots": {"city": "x"}}',  # not one of the enum's values
        '{"intent": "PlayMusic", "slots": {"city": "x"}, "extra": 1}',  # undeclared
        '{"intent": "PlayMusic", "slots": {"city": 3}}',  # a number for a string
        '{"intent": "PlayMusic", "slots": {"city": "x", "party_size": 2.5}}',  # not integer
        '{"intent": "PlayMusic", "slots": {"city": "x"}} trailing',
    ],
)
def test_documents_the_schema_refuses_cannot_be_written(document: str) -> None:
    stack = advance_bytes(start(compile_schema(INTENT_SCHEMA)), document.encode())
    assert stack is None or not accepting(stack)


def test_bounds_on_strings_and_arrays_are_kept() -> None:
    grammar = compile_schema(SCALARS_SCHEMA)
    base = '{"amount": 1, "count": 2, "urgent": true, "note": null, "level": 10, '
    assert accepting(
        advance_bytes(start(grammar), (base + '"tags": ["a"], "code": "ab"}').encode()) or ()
    )
    for tail in (
        '"tags": [], "code": "ab"}',
        '"tags": ["a"], "code": "abcde"}',
        '"tags": ["a","b","c","d"], "code": "ab"}',
    ):
        stack = advance_bytes(start(grammar), (base + tail).encode())
        assert stack is None or not accepting(stack), tail


def test_keywords_outside_the_subset_still_give_json(student: StudentModel) -> None:
    schema = {
        "type": "object",
        "properties": {
            "email": {"type": "string", "format": "email", "pattern": "^.+@.+$"},
            "either": {
                "oneOf": [
                    {"type": "object", "properties": {"a": {"type": "string"}}},
                    {"type": "object"},
                ]
            },
        },
        "required": ["email", "either"],
    }
    generation = student.generate(
        MESSAGES,
        adapter=None,
        max_new_tokens=60,
        temperature=1.0,
        seed=1,
        response_format=json_schema_format(schema),
    )
    document = json.loads(generation.text)
    assert set(document) == {"email", "either"}
    assert isinstance(document["email"], str)


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"name": "x"}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/none"}}},
        {"type": "grammar"},
    ],
)
def test_response_format_that_cannot_be_followed_is_refused(
    student: StudentModel, response_format: dict[str, Any]
) -> None:
    with pytest.raises(ResponseFormatError):
        student.generate(MESSAGES, adapter=None, max_new_tokens=4, response_format=response_format)


def test_text_response_format_leaves_the_answer_free(student: StudentModel) -> None:
    free = student.generate(MESSAGES, adapter=None, max_new_tokens=12)
    text = student.generate(
        MESSAGES, adapter=None, max_new_tokens=12, response_format={"type": "text"}
    )
    assert text.text == free.text
