"""Checks a student answer must pass before a client sees it: confidence at or above the
version's calibrated threshold, and output valid for the requested format."""

from __future__ import annotations

from typing import Any

import jsonschema

from core.agreement import parse_json_object


def confident(confidence: float, threshold: float | None) -> bool:
    """No calibrated threshold means the version never reached the target: not confident."""
    return threshold is not None and confidence >= threshold


# Scored answers the student served: audits, and feedback (a bad rating, router.drift).
SERVED_KINDS = frozenset({"audit", "feedback"})


def served_agreement(
    results: list[tuple[str, bool, float | None]], threshold: float | None
) -> tuple[float | None, int]:
    """Agreement of the scored answers (kind, agrees, confidence) the student served or
    would have served: every audit and every answer an app rated bad by feedback (served
    answers), and the shadow answers at or above ``threshold``. Shadow answers below it
    would have gone to the teacher, so they say nothing about the quality of what the
    student serves. Returns (agreement, pairs)."""
    kept = [
        agrees
        for kind, agrees, confidence in results
        if kind in SERVED_KINDS or (confidence is not None and confident(confidence, threshold))
    ]
    return (sum(kept) / len(kept) if kept else None), len(kept)


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
