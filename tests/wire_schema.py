"""Check response bodies against OpenAI's published OpenAPI schemas.

``validate(name, instance)`` raises ``AssertionError`` listing every place (as a ``$.a[0].b``
path) where ``instance`` does not match ``#/components/schemas/<name>`` of the subset in
``tests/openapi/schemas.json`` (see ``tests/openapi/README.md`` for where that comes from).
``validate_sse_stream`` does the same for a whole ``text/event-stream`` body.

OpenAPI is not quite JSON Schema, so the schemas are adjusted once, on load:

* ``nullable: true`` (an OpenAPI 3.0 keyword that a few 3.1 schemas still use, for instance
  the stream chunk's ``finish_reason``, ``logprobs`` and ``usage``) is turned into
  ``anyOf: [<schema>, {"type": "null"}]``. A JSON Schema validator would otherwise ignore it
  and reject the ``null`` that every real stream chunk carries.
* ``$recursiveAnchor``/``$recursiveRef: "#"`` (Draft 2019-09, used by the file search
  tool's ``CompoundFilter``, which nests itself) become a plain ``$ref`` to the schema
  itself: Draft 2020-12 has no such keywords and refuses ``$recursiveAnchor: true``.
* ``system_fingerprint`` is allowed to be ``null``: the spec says string, but the API has
  sent ``null`` for some models and the official SDK types it ``Optional[str]``.

The remaining OpenAPI extras are harmless and stay as they are: ``discriminator``,
``x-oaiTypeLabel``, ``x-oaiMeta``, ``x-stainless-const``, ``example`` and ``deprecated`` are
annotations to a Draft 2020-12 validator, and ``format`` (``unixtime``, ``float``, ...) is
not asserted because no format checker is used.

Fields the spec requires that OpenAI-compatible servers (and hand-written fakes) often omit,
so a fake upstream must send them explicitly:

* chat completion: each choice's ``logprobs`` (send ``null``) and ``finish_reason``;
  the message's ``content`` (``null`` when there are only ``tool_calls``) and ``refusal``
  (send ``null``); ``created``, ``model`` and ``object: "chat.completion"`` at the top.
* stream chunk: each choice's ``finish_reason`` on every chunk (``null`` until the last)
  and ``delta`` (``{}`` on the final one); ``created``, ``model``, ``object:
  "chat.completion.chunk"`` on every chunk, including the usage-only one (``choices: []``).
* usage, wherever it appears: all of ``prompt_tokens``, ``completion_tokens`` and
  ``total_tokens``; embeddings responses must carry ``usage`` at all.
* error: all four of ``message``, ``type``, ``param`` and ``code``; ``param`` and ``code``
  may be ``null`` but must be present, and ``code`` must be a string (some servers send the
  HTTP status as an integer there).
* model: ``created`` and ``owned_by`` besides ``id`` and ``object: "model"``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]
from referencing import Registry
from referencing.jsonschema import DRAFT202012

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

SCHEMAS_PATH = Path(__file__).resolve().parent / "openapi" / "schemas.json"
BASE_URI = "https://stillroom.invalid/openai-openapi.json"
"""Where the schema document is registered; it is never fetched."""

_MESSAGE_LIMIT = 240

# Keywords whose value is a schema, a list of schemas, or a mapping of names to schemas.
_SCHEMA_KEYWORDS = frozenset(
    {
        "additionalItems",
        "additionalProperties",
        "contains",
        "else",
        "if",
        "items",
        "not",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_SCHEMA_LIST_KEYWORDS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_MAP_KEYWORDS = frozenset(
    {"$defs", "definitions", "dependentSchemas", "patternProperties", "properties"}
)

# Properties the spec declares non-nullable but that real responses carry as null.
_ALSO_NULLABLE: tuple[tuple[str, str], ...] = (
    ("CreateChatCompletionResponse", "system_fingerprint"),
    ("CreateChatCompletionStreamResponse", "system_fingerprint"),
)


class _SchemaError(Protocol):
    """The parts of ``jsonschema.ValidationError`` used here."""

    @property
    def message(self) -> str: ...
    @property
    def absolute_path(self) -> Sequence[str | int]: ...
    @property
    def relative_schema_path(self) -> Sequence[str | int]: ...
    @property
    def context(self) -> Sequence[_SchemaError] | None: ...
    @property
    def validator(self) -> str: ...
    @property
    def validator_value(self) -> object: ...


class _Validator(Protocol):
    def iter_errors(self, instance: object) -> Iterable[_SchemaError]: ...


def _spell_recursion(schema: object, own_ref: str) -> Any:
    """A copy of ``schema`` with its Draft 2019-09 self-reference as a plain ``$ref``."""
    if isinstance(schema, list):
        return [_spell_recursion(item, own_ref) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("$recursiveRef") == "#":
        return {"$ref": own_ref}
    return {
        key: _spell_recursion(value, own_ref)
        for key, value in schema.items()
        if key != "$recursiveAnchor"
    }


def openapi_to_json_schema(schema: object) -> Any:
    """A copy of an OpenAPI schema with ``nullable: true`` spelled the JSON Schema way."""
    if isinstance(schema, list):
        return [openapi_to_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_KEYWORDS or key in _SCHEMA_LIST_KEYWORDS:
            converted[key] = openapi_to_json_schema(value)
        elif key in _SCHEMA_MAP_KEYWORDS and isinstance(value, dict):
            converted[key] = {name: openapi_to_json_schema(sub) for name, sub in value.items()}
        else:
            converted[key] = value
    if converted.pop("nullable", False) is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@functools.cache
def load_schemas() -> dict[str, Any]:
    """The component schemas from ``schemas.json``, adjusted to validate like the real API."""
    document = json.loads(SCHEMAS_PATH.read_text(encoding="utf-8"))
    schemas: dict[str, Any] = {
        name: openapi_to_json_schema(_spell_recursion(schema, f"#/components/schemas/{name}"))
        for name, schema in document["components"]["schemas"].items()
    }
    for schema_name, prop in _ALSO_NULLABLE:
        properties = schemas[schema_name]["properties"]
        properties[prop] = {"anyOf": [properties[prop], {"type": "null"}]}
    return schemas


@functools.cache
def _registry() -> Registry[Any]:
    document = {"components": {"schemas": load_schemas()}}
    registry: Registry[Any] = Registry().with_resource(
        BASE_URI, DRAFT202012.create_resource(document)
    )
    return registry


@functools.cache
def _validator(schema_name: str) -> _Validator:
    if schema_name not in load_schemas():
        known = ", ".join(sorted(load_schemas()))
        raise KeyError(f"no schema {schema_name!r} in {SCHEMAS_PATH.name}; known: {known}")
    root = {"$ref": f"{BASE_URI}#/components/schemas/{schema_name}"}
    return cast("_Validator", Draft202012Validator(root, registry=_registry()))


def _json_path(path: Iterable[str | int]) -> str:
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)


def _shorten(text: str) -> str:
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def _is_null_branch(error: _SchemaError) -> bool:
    """The uninformative "is not of type 'null'" from the null arm of a nullable anyOf."""
    return error.validator == "type" and error.validator_value == "null"


def _describe(errors: Iterable[_SchemaError], indent: str) -> list[str]:
    lines: list[str] = []
    for error in sorted(errors, key=lambda e: (_json_path(e.absolute_path), e.message)):
        lines.append(f"{indent}{_json_path(error.absolute_path)}: {_shorten(error.message)}")
        branches = [sub for sub in error.context or () if not _is_null_branch(sub)]
        lines.extend(_describe(branches, indent + "    "))
    return lines


def schema_errors(schema_name: str, instance: object) -> list[str]:
    """One line per way ``instance`` fails the schema (sub-schema reasons indented)."""
    return _describe(_validator(schema_name).iter_errors(instance), "  ")


def validate(schema_name: str, instance: object) -> None:
    """Assert that ``instance`` matches ``#/components/schemas/<schema_name>``."""
    errors = schema_errors(schema_name, instance)
    if errors:
        top_level = sum(1 for line in errors if not line.startswith("    "))
        count = f"{top_level} problem{'s' if top_level != 1 else ''}"
        raise AssertionError(
            f"does not match OpenAI schema {schema_name} ({count}):\n" + "\n".join(errors)
        )


def validate_chat_completion(instance: object) -> None:
    """A non-streaming ``/v1/chat/completions`` response body."""
    validate("CreateChatCompletionResponse", instance)


def validate_chat_chunk(instance: object) -> None:
    """One ``chat.completion.chunk`` event of a streaming response."""
    validate("CreateChatCompletionStreamResponse", instance)


def validate_error(instance: object) -> None:
    """An ``{"error": {...}}`` body, or an error event inside a stream."""
    validate("ErrorResponse", instance)


def validate_models_list(instance: object) -> None:
    """A ``/v1/models`` response body."""
    validate("ListModelsResponse", instance)


def validate_embeddings(instance: object) -> None:
    """A ``/v1/embeddings`` response body."""
    validate("CreateEmbeddingResponse", instance)


def validate_response(instance: object) -> None:
    """A non-streaming ``/v1/responses`` response body (a ``response`` object)."""
    validate("Response", instance)


def validate_input_items(instance: object) -> None:
    """A ``GET /v1/responses/{id}/input_items`` body (a list of input items)."""
    validate("ResponseItemList", instance)


_RESPONSE_STREAM_ENDS = frozenset(
    {"response.completed", "response.incomplete", "response.failed", "error"}
)


def validate_response_stream(body: bytes) -> list[dict[str, Any]]:
    """Assert that ``body`` is a well-formed Responses API stream; return its JSON events.

    Every event must carry an ``event:`` line naming its type and a ``data:`` line whose
    JSON validates as a ``ResponseStreamEvent`` of that ``type``; ``sequence_number``
    counts up from 0 by one; the first event is ``response.created`` and the last, and
    only the last, ends the response (``response.completed``, ``response.incomplete``,
    ``response.failed`` or ``error``). There is no ``[DONE]`` in this API.
    """
    text = body.decode("utf-8").replace("\r\n", "\n")
    problems: list[str] = []
    if not text.endswith("\n\n"):
        problems.append(f"last event is not terminated by a blank line: {text[-60:]!r}")
    events: list[dict[str, Any]] = []
    for number, block in enumerate(filter(None, text.split("\n\n")), start=1):
        names = [
            line[len("event:") :].strip() for line in block.split("\n") if line.startswith("event:")
        ]
        data = _sse_data(block)
        if data is None or len(names) != 1:
            problems.append(f"event {number} needs one event: and a data: line: {block[:80]!r}")
            continue
        payload = json.loads(data)
        if payload.get("type") != names[0]:
            problems.append(f"event {number}: event: {names[0]} but type {payload.get('type')}")
        if payload.get("sequence_number") != len(events):
            problems.append(f"event {number}: sequence_number {payload.get('sequence_number')}")
        errors = schema_errors("ResponseStreamEvent", payload)
        if errors:
            problems.append(f"event {number} ({names[0]}) does not match ResponseStreamEvent:")
            problems.extend(errors)
        events.append(payload)
    kinds = [event.get("type") for event in events]
    if not kinds or kinds[0] != "response.created":
        problems.append(f"the stream does not open with response.created: {kinds[:1]}")
    ends = [number for number, kind in enumerate(kinds) if kind in _RESPONSE_STREAM_ENDS]
    if ends != [len(kinds) - 1]:
        problems.append(f"the stream must end once, with its last event: {kinds}")
    if problems:
        raise AssertionError("invalid Responses API stream:\n" + "\n".join(problems))
    return events


def _sse_data(event: str) -> str | None:
    """The joined ``data:`` lines of one SSE event, or None when it has none."""
    data: list[str] = []
    for line in event.split("\n"):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
    return "\n".join(data) if data else None


def validate_sse_stream(body: bytes) -> list[dict[str, Any]]:
    """Assert that ``body`` is a well-formed chat completion stream; return its JSON events.

    Every event must be terminated by a blank line, carry JSON that validates as a stream
    chunk (or, when it has an ``"error"`` key, as an ``ErrorResponse``), and the stream must
    end with ``data: [DONE]`` unless it carried an error event, after which nothing but
    ``[DONE]`` may follow. Comment lines and events without data are skipped. The parsed
    events, error events included and ``[DONE]`` excluded, are returned in order.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AssertionError(f"stream is not UTF-8: {exc}") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    problems: list[str] = []
    if not text.strip():
        raise AssertionError("stream is empty")
    if not text.endswith("\n\n"):
        problems.append(f"last event is not terminated by a blank line: {text[-60:]!r}")
    chunks: list[dict[str, Any]] = []
    done = False
    error_seen = False
    for number, event in enumerate(text.split("\n\n"), start=1):
        data = _sse_data(event)
        if data is None:
            continue
        if done:
            problems.append(f"event {number} comes after [DONE]: {_shorten(data)!r}")
            continue
        if data == "[DONE]":
            done = True
            continue
        if error_seen:
            problems.append(f"event {number} comes after an error event: {_shorten(data)!r}")
            continue
        try:
            payload = json.loads(data)
        except json.JSONDecodeError as exc:
            problems.append(f"event {number} is not JSON ({exc}): {_shorten(data)!r}")
            continue
        if not isinstance(payload, dict):
            problems.append(f"event {number} is not a JSON object: {_shorten(data)!r}")
            continue
        error_seen = "error" in payload
        schema_name = "ErrorResponse" if error_seen else "CreateChatCompletionStreamResponse"
        errors = schema_errors(schema_name, payload)
        if errors:
            problems.append(f"event {number} does not match OpenAI schema {schema_name}:")
            problems.extend(errors)
        chunks.append(payload)
    if not chunks:
        problems.append("stream carries no JSON events")
    if not done and not error_seen:
        problems.append("stream does not end with data: [DONE]")
    if problems:
        raise AssertionError("invalid chat completion stream:\n" + "\n".join(problems))
    return chunks
