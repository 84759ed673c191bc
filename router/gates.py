"""Checks a student answer must pass before a client sees it: confidence at or above the
version's calibrated threshold, and output valid for the requested format."""

from __future__ import annotations

from typing import Any

import jsonschema

from core.agreement import parse_json_object


def confident(confidence: float, threshold: float | None) -> bool:
    """No calibrated threshold means the version never reached the target: not confident."""
    return threshold is not None and confidence >= threshold


def output_problem(text: str, response_format: dict[str, Any] | None) -> str | None:
    """Why the answer does not satisfy ``response_format``, or None."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None if text.strip() else "empty"
    document = parse_json_object(text)
    if document is None:
        return "invalid_json"
    if kind == "json_schema":
        schema = ((response_format or {}).get("json_schema") or {}).get("schema")
        if schema:
            try:
                jsonschema.validate(document, schema)
            except jsonschema.ValidationError:
                return "schema_mismatch"
            except jsonschema.SchemaError:
                return None  # the client's schema is broken; the teacher would judge it
    return None
