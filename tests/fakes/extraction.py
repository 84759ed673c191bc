"""An extraction task for tests: a voice assistant's request parser on SNIPS utterances.

The teacher answers each utterance with its gold intent and two of its slots (``city``
and ``state``), as JSON: in the message content (``response_format``
json_object or json_schema) or as the arguments of a call of the request's one tool. The
fake teacher here speaks the real wire format (non-streamed and streamed), built from the
same ``core.wire`` models the proxy uses.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from core.profile import prompt_key
from core.wire import (
    SSE_DONE,
    AssistantMessage,
    ChatCompletion,
    Choice,
    FunctionCall,
    ToolCall,
    Usage,
    completion_chunks,
    sse,
)
from distiller.curation import Example
from distiller.datasets import snips_nlu7

INTENTS = ["GetWeather", "BookRestaurant"]
SLOTS = ("city", "state")
SYSTEM = {"role": "system", "content": "Parse the voice assistant request into JSON."}
FUNCTION = "parse_request"
TOOL = {
    "type": "function",
    "function": {
        "name": FUNCTION,
        "description": "Record the parsed request.",
        "parameters": {
            "type": "object",
            "properties": {
                "intent": {"type": "string", "enum": INTENTS},
                **{slot: {"type": "string"} for slot in SLOTS},
            },
            "required": ["intent"],
        },
    },
}


def rows(split: str, per_intent: int, *, skip: int = 0) -> list[dict[str, Any]]:
    """SNIPS rows of the two intents, ``per_intent`` of each after the first ``skip``."""
    taken: dict[str, int] = {}
    chosen = []
    for row in snips_nlu7()[split]:
        intent = row["intent"]
        if intent in INTENTS:
            taken[intent] = taken.get(intent, 0) + 1
            if skip < taken[intent] <= skip + per_intent:
                chosen.append(row)
    return chosen


def gold(row: dict[str, Any], *, nulls: bool = False) -> dict[str, Any]:
    """The teacher's answer: the intent, and the slots it names (absent ones left out, or
    ``null`` with ``nulls``)."""
    slots = dict(row["slots"])
    answer: dict[str, Any] = {"intent": row["intent"]}
    for slot in SLOTS:
        if slot in slots or nulls:
            answer[slot] = slots.get(slot)
    return answer


@functools.cache
def _by_text() -> dict[str, dict[str, Any]]:
    data = snips_nlu7()
    return {row["text"]: row for row in data["train"] + data["validate"]}


def messages(text: str) -> list[dict[str, Any]]:
    return [SYSTEM, {"role": "user", "content": text}]


def examples(chosen: list[dict[str, Any]], *, nulls: bool = False) -> list[Example]:
    """Curated pairs of ``chosen`` rows with content answers."""
    return [
        Example(
            uuid.uuid4().hex,
            messages(row["text"]),
            json.dumps(gold(row, nulls=nulls)),
            prompt_key(messages(row["text"])),
        )
        for row in chosen
    ]


class ExtractionTeacher:
    """An OpenAI-compatible teacher that parses SNIPS utterances: the last user turn's gold
    answer, or ``{"intent": "Unknown"}`` for text it does not know; ``answers`` overrides
    the answer to a text."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[dict[str, Any]] = []
        self.answers: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    def answer(self, payload: dict[str, Any]) -> dict[str, Any]:
        text = str(payload["messages"][-1].get("content") or "")
        if text in self.answers:
            return self.answers[text]
        row = _by_text().get(text)
        nulls = (payload.get("response_format") or {}).get("type") == "json_schema"
        return gold(row, nulls=nulls) if row is not None else {"intent": "Unknown"}

    async def chat(self, request: Request) -> Response:
        payload = await request.json()
        with self._lock:
            self.requests.append(payload)
        whole = self.completion(payload)
        if not payload.get("stream"):
            return JSONResponse(whole.model_dump(mode="json"))
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))

        def events() -> Iterator[bytes]:
            for chunk in completion_chunks(whole, include_usage=include_usage):
                yield sse(chunk)
            yield SSE_DONE

        return StreamingResponse(events(), media_type="text/event-stream")

    def completion(self, payload: dict[str, Any]) -> ChatCompletion:
        document = json.dumps(self.answer(payload))
        usage = Usage.of(40, len(document) // 4)
        tools = payload.get("tools") or []
        if not tools:
            return ChatCompletion.from_text(document, model=payload["model"], usage=usage)
        message = AssistantMessage(content=None, annotations=[])
        name = tools[0]["function"]["name"]
        message.tool_calls = [
            ToolCall(
                id=f"call_{uuid.uuid4().hex[:24]}",
                function=FunctionCall(name=name, arguments=document),
            )
        ]
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=payload["model"],
            choices=[Choice(index=0, message=message, finish_reason="tool_calls")],
            usage=usage,
        )
