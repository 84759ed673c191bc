"""Server-sent events from the teacher: split into events, reassembled into one answer.

The relay forwards each event as soon as it is complete; the assembler watches the same
events to rebuild the answer a non-streamed call would have returned (content, tool-call
deltas merged by index, logprobs, finish_reason, usage) for capture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
DONE = b"[DONE]"


class EventSplitter:
    """Cuts a byte stream into complete SSE events (separator included)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        events: list[bytes] = []
        start = 0
        for match in _EVENT_END.finditer(self._buffer):
            events.append(self._buffer[start : match.end()])
            start = match.end()
        self._buffer = self._buffer[start:]
        return events

    @property
    def pending(self) -> bytes:
        """Bytes after the last complete event (a stream cut mid-event leaves some)."""
        return self._buffer


def event_data(event: bytes) -> bytes | None:
    """The ``data`` field of an event (multi-line data joined), or None for comments."""
    lines = [
        line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


@dataclass
class _ChoiceState:
    role: str = "assistant"
    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs_content: list[Any] = field(default_factory=list)
    logprobs_refusal: list[Any] = field(default_factory=list)
    has_logprobs: bool = False
    finish_reason: str | None = None


class StreamAssembler:
    """Rebuilds a ``chat.completion`` from ``chat.completion.chunk`` events.

    With ``strip_usage`` (the proxy asked the teacher for usage the client did not ask
    for), :meth:`add` returns the event with usage removed, or None for the usage-only
    chunk, so the client sees exactly the stream it asked for. An event whose data is no
    JSON object is returned as it came and kept in :attr:`malformed`.
    """

    def __init__(self, *, strip_usage: bool = False) -> None:
        self.strip_usage = strip_usage
        self.done = False
        self.error: dict[str, Any] | None = None
        # The data of the first event that is no chunk (not a JSON object): the answer
        # has a hole there, so what it reassembles is not the teacher's answer.
        self.malformed: bytes | None = None
        self.usage: dict[str, Any] | None = None
        self._head: dict[str, Any] = {}
        self._choices: dict[int, _ChoiceState] = {}

    def add(self, event: bytes) -> bytes | None:
        """Take one event; return what to forward to the client (None: nothing)."""
        data = event_data(event)
        if data is None:
            return event
        if data.strip() == DONE:
            self.done = True
            return event
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict):
            if self.malformed is None:
                self.malformed = data
            return event
        if "error" in chunk:
            self.error = chunk
            return event
        self._take(chunk)
        if self.strip_usage and "usage" in chunk:
            if not chunk.get("choices"):
                return None
            del chunk["usage"]
            return b"data: " + orjson.dumps(chunk) + b"\n\n"
        return event

    def _take(self, chunk: dict[str, Any]) -> None:
        if not self._head:
            self._head = {
                key: chunk[key]
                for key in ("id", "created", "model", "system_fingerprint", "service_tier")
                if key in chunk
            }
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            state = self._choices.setdefault(int(choice.get("index", 0)), _ChoiceState())
            delta = choice.get("delta") or {}
            if delta.get("role"):
                state.role = delta["role"]
            if delta.get("content"):
                state.content.append(delta["content"])
            if delta.get("refusal"):
                state.refusal.append(delta["refusal"])
            for call in delta.get("tool_calls") or []:
                _merge_tool_call(state.tool_calls, call)
            logprobs = choice.get("logprobs")
            if logprobs is not None:
                state.has_logprobs = True
                state.logprobs_content.extend(logprobs.get("content") or [])
                state.logprobs_refusal.extend(logprobs.get("refusal") or [])
            if choice.get("finish_reason"):
                state.finish_reason = choice["finish_reason"]

    @property
    def finish_reason(self) -> str | None:
        first = self._choices.get(0)
        return first.finish_reason if first else None

    def completion(self) -> dict[str, Any]:
        """The answer as a non-streamed ``chat.completion`` body."""
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: dict[str, Any] = {
                "role": state.role,
                "content": "".join(state.content) if state.content else None,
                "refusal": "".join(state.refusal) if state.refusal else None,
            }
            if state.tool_calls:
                message["tool_calls"] = [state.tool_calls[i] for i in sorted(state.tool_calls)]
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": {
                        "content": state.logprobs_content,
                        "refusal": state.logprobs_refusal or None,
                    }
                    if state.has_logprobs
                    else None,
                    "finish_reason": state.finish_reason,
                }
            )
        return {
            "id": self._head.get("id", ""),
            "object": "chat.completion",
            "created": self._head.get("created", 0),
            "model": self._head.get("model", ""),
            **{k: v for k, v in self._head.items() if k in ("system_fingerprint", "service_tier")},
            "choices": choices,
            **({"usage": self.usage} if self.usage is not None else {}),
        }


def _merge_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    """Tool calls stream as deltas keyed by index: the first carries id, type and name;
    later ones append to the arguments."""
    index = int(delta.get("index", 0))
    call = calls.setdefault(
        index, {"id": None, "type": "function", "function": {"name": None, "arguments": ""}}
    )
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    function = delta.get("function") or {}
    if function.get("name"):
        call["function"]["name"] = (call["function"]["name"] or "") + function["name"]
    if function.get("arguments"):
        call["function"]["arguments"] += function["arguments"]
