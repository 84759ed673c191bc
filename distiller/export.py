"""A curated pair as a record of OpenAI's fine-tuning JSONL.

A pair whose teacher answered in text is a chat ending with the assistant's text; one whose
teacher called tools is a tool fine-tuning record: the request's ``tools`` beside the
messages, and the assistant turn's ``tool_calls`` (ids made up, as the file format only
needs them unique within the record).
"""

from __future__ import annotations

import json
from typing import Any

from distiller.curation import Example


def tool_calls_of(answer: str) -> list[dict[str, Any]] | None:
    """The calls of a curated tool-calling answer (``[{"name", "arguments"}, ...]``), in
    OpenAI's ``tool_calls`` shape; None for a text answer."""
    try:
        calls = json.loads(answer)
    except ValueError:
        return None
    if not isinstance(calls, list) or not calls:
        return None
    if not all(isinstance(c, dict) and set(c) == {"name", "arguments"} for c in calls):
        return None
    return [
        {
            "id": f"call_{number}",
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }
        for number, call in enumerate(calls)
    ]


def fine_tuning_record(example: Example, request: dict[str, Any]) -> dict[str, Any]:
    """One line of the export: ``messages`` (and ``tools`` for a tool-calling pair)."""
    calls = tool_calls_of(example.answer) if request.get("tools") else None
    if calls is None:
        answer = {"role": "assistant", "content": example.answer}
        return {"messages": [*example.messages, answer]}
    turn = {"role": "assistant", "content": None, "tool_calls": calls}
    record: dict[str, Any] = {"messages": [*example.messages, turn], "tools": request["tools"]}
    if request.get("parallel_tool_calls") is not None:
        record["parallel_tool_calls"] = request["parallel_tool_calls"]
    return record
