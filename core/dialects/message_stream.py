"""Anthropic's Messages stream: written for a student's answer (:func:`message_events`),
and read back together from a teacher's (:class:`MessageStreamAssembler`)."""

from __future__ import annotations

import copy
import json
from typing import Any, Literal

from core.dialects.errors import DialectError
from core.wire.messages import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    InputJsonDelta,
    MessageDeltaEvent,
    MessageDeltaUsage,
    MessageObject,
    MessageStartEvent,
    MessageStopEvent,
    MessageStreamEvent,
    PingEvent,
    StopDelta,
    TextBlock,
    TextDelta,
    ToolUseBlock,
)
from core.wire.responses import named_sse

StreamStatus = Literal["ok", "error", "aborted"]

_DELTAS = 4  # pieces a text or a tool's input is sent in


def _pieces(text: str) -> list[str]:
    size = max(1, -(-len(text) // _DELTAS))
    return [text[start : start + size] for start in range(0, len(text), size)]


def message_events(message: dict[str, Any]) -> list[bytes]:
    """The server-sent events Anthropic streams for ``message``: ``message_start`` (the
    message with no content and no stop reason yet), a ``ping``, each block started, its
    text in ``text_delta``s or its input in ``input_json_delta`` pieces, and stopped,
    then ``message_delta`` (stop reason and the final usage) and ``message_stop``."""
    whole = MessageObject.model_validate(message)
    start = whole.model_copy(
        update={
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": whole.usage.model_copy(
                update={"output_tokens": min(1, whole.usage.output_tokens)}
            ),
        }
    )
    events: list[MessageStreamEvent] = [MessageStartEvent(message=start), PingEvent()]
    for index, block in enumerate(whole.content):
        if isinstance(block, TextBlock):
            opened: TextBlock | ToolUseBlock = TextBlock(text="")
            deltas: list[TextDelta | InputJsonDelta] = [
                TextDelta(text=piece) for piece in _pieces(block.text)
            ]
        else:
            opened = block.model_copy(update={"input": {}})
            deltas = [InputJsonDelta(partial_json="")]
            deltas += [InputJsonDelta(partial_json=p) for p in _pieces(json.dumps(block.input))]
        events.append(ContentBlockStartEvent(index=index, content_block=opened))
        events += [ContentBlockDeltaEvent(index=index, delta=delta) for delta in deltas]
        events.append(ContentBlockStopEvent(index=index))
    usage = MessageDeltaUsage(
        output_tokens=whole.usage.output_tokens,
        input_tokens=whole.usage.input_tokens,
        cache_creation_input_tokens=whole.usage.cache_creation_input_tokens,
        cache_read_input_tokens=whole.usage.cache_read_input_tokens,
    )
    stop = StopDelta(stop_reason=whole.stop_reason, stop_sequence=whole.stop_sequence)
    events += [MessageDeltaEvent(delta=stop, usage=usage), MessageStopEvent()]
    return [named_sse(event.type, event) for event in events]


_KNOWN = frozenset(
    {
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    }
)
# The field of its block each kind of delta adds to (a signature comes whole).
_DELTA_FIELDS = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature"}


class MessageStreamAssembler:
    """Puts a teacher's Messages stream back together, one event (its ``event:`` name and
    its parsed ``data:``) at a time, as the SDK's stream reader does. Anthropic may add
    event types; well-formed ones this code does not know are passed over."""

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._json: dict[int, str] = {}
        self._status: StreamStatus = "aborted"
        self._ended = False

    @property
    def status(self) -> StreamStatus:
        """``ok`` after ``message_stop``, ``error`` after an ``error`` event, ``aborted``
        while neither came."""
        return self._status

    def feed(self, event_type: str, data: dict[str, Any]) -> None:
        """Take the next event; raises :class:`DialectError` for one that is no Messages
        stream event (no ``type``, or not the one its ``event:`` line names), or that comes
        out of order (before ``message_start``, after the end, about a block never
        started)."""
        kind = data.get("type") if isinstance(data, dict) else None
        if not isinstance(kind, str) or kind != event_type:
            raise DialectError(f"not a Messages stream event: {event_type} {str(data)[:120]}")
        if self._ended:
            raise DialectError(f"{kind} after the end of the stream")
        if kind == "error":
            self._ended, self._status = True, "error"
            return
        if kind not in _KNOWN or kind == "ping":
            return
        if kind == "message_start":
            if self._message is not None or not isinstance(data.get("message"), dict):
                raise DialectError("message_start twice, or without a message")
            self._message = copy.deepcopy(data["message"])
            self._message.setdefault("content", [])
            return
        if self._message is None:
            raise DialectError(f"{kind} before message_start")
        try:
            self._apply(kind, data, self._message)
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise DialectError(f"{kind} does not fit the message: {exc!r}") from None

    def _apply(self, kind: str, data: dict[str, Any], message: dict[str, Any]) -> None:
        content: list[dict[str, Any]] = message["content"]
        if kind == "content_block_start":
            if data["index"] != len(content):
                raise IndexError(f"block {data['index']} started out of turn")
            content.append(copy.deepcopy(data["content_block"]))
        elif kind == "content_block_delta":
            self._delta(content[data["index"]], data["index"], data["delta"])
        elif kind == "content_block_stop":
            block = content[data["index"]]
            if data["index"] in self._json:
                given = self._json.pop(data["index"])
                block["input"] = json.loads(given) if given else {}
        elif kind == "message_delta":
            delta, usage = data["delta"], data.get("usage") or {}
            message["stop_reason"] = delta.get("stop_reason")
            message["stop_sequence"] = delta.get("stop_sequence")
            totals = message.setdefault("usage", {})
            for name, value in usage.items():
                if value is not None:
                    totals[name] = value
        else:  # message_stop
            if self._json:
                raise ValueError("a tool_use block was never stopped")
            self._ended, self._status = True, "ok"

    def _delta(self, block: dict[str, Any], index: int, delta: dict[str, Any]) -> None:
        kind = delta["type"]
        if kind == "input_json_delta":
            if block["type"] not in ("tool_use", "server_tool_use", "mcp_tool_use"):
                raise TypeError(f"input_json_delta on a {block['type']} block")
            self._json[index] = self._json.get(index, "") + str(delta["partial_json"])
        elif kind in _DELTA_FIELDS:
            field = _DELTA_FIELDS[kind]
            if kind == "text_delta" and block["type"] != "text":
                raise TypeError(f"text_delta on a {block['type']} block")
            if kind == "signature_delta":
                block[field] = str(delta[field])
            else:
                block[field] = block.get(field, "") + str(delta[field])
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta["citation"])

    def result(self) -> dict[str, Any] | None:
        """The whole message once ``message_stop`` came, else None."""
        return self._message if self._status == "ok" else None
