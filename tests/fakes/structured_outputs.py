"""vLLM's structured outputs as the fake vLLM plays them: a ``response_format`` read as
vLLM's ``ResponseFormat`` (a malformed one refused), and an answer that keeps to it."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema", "structural_tag")


def structured_answer(response_format: Any, text: str) -> str:
    """``text`` as vLLM's structured outputs let it out under ``response_format``:
    unchanged when it fits (plain text always does), else the smallest document that does.
    Raises ValueError, as vLLM answers 400, for a ``response_format`` it would refuse."""
    if not isinstance(response_format, dict) or response_format.get("type") not in (
        RESPONSE_FORMAT_TYPES
    ):
        raise ValueError(
            f"1 validation error for ChatCompletionRequest response_format: {response_format!r}"
        )
    kind = response_format["type"]
    if kind in ("text", "structural_tag"):
        return text
    schema: dict[str, Any] = {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ValueError("response_format.json_schema needs a name (JsonSchemaResponseFormat)")
        if not isinstance(spec.get("schema"), dict):
            raise ValueError("response_format json_schema without a schema")
        schema = spec["schema"]
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return json.dumps(smallest_document(schema, schema))
    return text


def smallest_document(schema: Any, root: dict[str, Any]) -> Any:
    """A small document ``schema`` accepts (its required properties only)."""
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        target: Any = root
        for part in str(schema["$ref"]).removeprefix("#/").split("/"):
            target = target[part]
        return smallest_document(target, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if schema.get("anyOf") or schema.get("oneOf"):
        return smallest_document((schema.get("anyOf") or schema.get("oneOf"))[0], root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {k: smallest_document(properties.get(k), root) for k in schema.get("required", [])}
    if kind == "array":
        return [
            smallest_document(schema.get("items"), root) for _ in range(schema.get("minItems", 0))
        ]
    defaults = {"string": "", "integer": 0, "number": 0, "boolean": False}
    if kind == "string":
        return "x" * schema.get("minLength", 0)
    return defaults.get(str(kind))
