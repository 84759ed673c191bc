"""The Responses API's stream of ``response.*`` events: written for a student's answer
(:func:`response_events`), and read back together from a teacher's
(:class:`ResponseStreamAssembler`)."""

from __future__ import annotations

import copy
from typing import Any, Literal

from core.dialects.errors import DialectError
from core.wire.responses import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    FunctionCallItem,
    OutputItemEvent,
    OutputMessage,
    OutputText,
    Refusal,
    RefusalDeltaEvent,
    RefusalDoneEvent,
    ResponseLifecycleEvent,
    ResponseObject,
    ResponseStreamEvent,
    TextDeltaEvent,
    TextDoneEvent,
    named_sse,
)

StreamStatus = Literal["ok", "error", "aborted"]

_TERMINAL: dict[str, StreamStatus] = {
    "response.completed": "ok",
    "response.incomplete": "ok",
    "response.failed": "error",
}
_DELTAS = 4  # pieces a text or an argument string is sent in


def response_events(response: dict[str, Any]) -> list[bytes]:
    """The server-sent events OpenAI streams for ``response``: ``response.created`` and
    ``response.in_progress`` (the response with no output yet), each output item opened,
    its text or arguments in a few deltas, closed, then ``response.completed`` (or
    ``response.incomplete``, ``response.failed``) with the whole response. Numbered by
    ``sequence_number`` from 0."""
    whole = ResponseObject.model_validate(response)
    events: list[ResponseStreamEvent] = []

    def opening(kind: Literal["response.created", "response.in_progress"]) -> None:
        start = ResponseObject.model_validate(
            {
                **whole.model_dump(exclude={"usage"}),
                "status": "in_progress",
                "output": [],
                "completed_at": None,
                "incomplete_details": None,
            }
        )
        events.append(ResponseLifecycleEvent(type=kind, sequence_number=0, response=start))

    opening("response.created")
    opening("response.in_progress")
    for index, item in enumerate(whole.output):
        events += _item_events(index, item)
    final = {"completed": "response.completed", "failed": "response.failed"}
    kind: Any = final.get(whole.status, "response.incomplete")
    events.append(ResponseLifecycleEvent(type=kind, sequence_number=0, response=whole))
    for number, event in enumerate(events):
        event.sequence_number = number
    return [named_sse(event.type, event) for event in events]


def _pieces(text: str) -> list[str]:
    size = max(1, -(-len(text) // _DELTAS))
    return [text[start : start + size] for start in range(0, len(text), size)] or [""]


def _item_events(index: int, item: OutputMessage | FunctionCallItem) -> list[ResponseStreamEvent]:
    head = {"sequence_number": 0, "output_index": index}
    if isinstance(item, FunctionCallItem):
        opened = item.model_copy(update={"status": "in_progress", "arguments": ""})
        return [
            OutputItemEvent(type="response.output_item.added", item=opened, **head),
            *(
                ArgumentsDeltaEvent(item_id=item.id, delta=piece, **head)
                for piece in _pieces(item.arguments)
            ),
            ArgumentsDoneEvent(item_id=item.id, name=item.name, arguments=item.arguments, **head),
            OutputItemEvent(type="response.output_item.done", item=item, **head),
        ]
    opened_message = item.model_copy(update={"status": "in_progress", "content": []})
    events: list[ResponseStreamEvent] = [
        OutputItemEvent(type="response.output_item.added", item=opened_message, **head)
    ]
    for content_index, part in enumerate(item.content):
        at = {**head, "item_id": item.id, "content_index": content_index}
        if isinstance(part, OutputText):
            empty: OutputText | Refusal = part.model_copy(update={"text": "", "logprobs": []})
            pieces: list[ResponseStreamEvent] = [
                TextDeltaEvent(delta=piece, **at) for piece in _pieces(part.text)
            ]
            done: ResponseStreamEvent = TextDoneEvent(text=part.text, logprobs=part.logprobs, **at)
        else:
            empty = part.model_copy(update={"refusal": ""})
            pieces = [RefusalDeltaEvent(delta=piece, **at) for piece in _pieces(part.refusal)]
            done = RefusalDoneEvent(refusal=part.refusal, **at)
        events += [
            ContentPartEvent(type="response.content_part.added", part=empty, **at),
            *pieces,
            done,
            ContentPartEvent(type="response.content_part.done", part=part, **at),
        ]
    events.append(OutputItemEvent(type="response.output_item.done", item=item, **head))
    return events


class ResponseStreamAssembler:
    """Puts a teacher's Responses stream back together, one parsed ``data:`` object at a
    time. The result is the response of the final event (``response.completed``,
    ``response.incomplete`` or ``response.failed``); where that carries no output, the
    output is rebuilt from the items and deltas that came before it."""

    def __init__(self) -> None:
        self._response: dict[str, Any] | None = None
        self._output: dict[int, dict[str, Any]] = {}
        self._final: dict[str, Any] | None = None
        self._status: StreamStatus = "aborted"
        self._ended = False
        self._sequence = -1

    @property
    def status(self) -> StreamStatus:
        """``ok`` once the response completed (or ended incomplete), ``error`` after a
        ``response.failed`` or ``error`` event, ``aborted`` while no such event came."""
        return self._status

    def feed(self, event: dict[str, Any]) -> None:
        """Take the next event; raises :class:`DialectError` for one that is no Responses
        stream event, or that comes out of order (before ``response.created``, after the
        end, or about an output item never opened)."""
        kind = event.get("type") if isinstance(event, dict) else None
        if not isinstance(kind, str) or not (kind.startswith("response.") or kind == "error"):
            raise DialectError(f"not a Responses stream event: {str(event)[:120]}")
        if self._ended:
            raise DialectError(f"{kind} after the end of the stream")
        self._check_sequence(event, kind)
        if kind == "error":
            self._ended, self._status = True, "error"
            return
        if self._response is None and kind not in ("response.created", "response.queued"):
            raise DialectError(f"{kind} before response.created")
        if kind in _TERMINAL:
            self._end(kind, event)
        elif kind in ("response.created", "response.queued", "response.in_progress"):
            self._response = dict(self._valid_response(event, kind))
        else:
            self._apply(kind, event)

    def _check_sequence(self, event: dict[str, Any], kind: str) -> None:
        number = event.get("sequence_number")
        if number is None:
            return
        if not isinstance(number, int) or number <= self._sequence:
            raise DialectError(f"{kind} out of order (sequence_number {number!r})")
        self._sequence = number

    def _valid_response(self, event: dict[str, Any], kind: str) -> dict[str, Any]:
        response = event.get("response")
        if not isinstance(response, dict) or not isinstance(response.get("id"), str):
            raise DialectError(f"{kind} without a response")
        return response

    def _end(self, kind: str, event: dict[str, Any]) -> None:
        final = copy.deepcopy(self._valid_response(event, kind))
        if not final.get("output") and self._output:
            final["output"] = [self._output[index] for index in sorted(self._output)]
        self._final, self._ended, self._status = final, True, _TERMINAL[kind]

    def _apply(self, kind: str, event: dict[str, Any]) -> None:
        if kind in ("response.output_item.added", "response.output_item.done"):
            item = event.get("item")
            index = event.get("output_index")
            if not isinstance(item, dict) or not isinstance(index, int):
                raise DialectError(f"{kind} without an item and its output_index")
            if kind.endswith("added") and index in self._output:
                raise DialectError(f"{kind}: output_index {index} opened twice")
            self._output[index] = copy.deepcopy(item)
            return
        if not _delta_kind(kind):
            return  # events about built-in tools, reasoning and annotations carry no answer
        item = self._output.get(event.get("output_index"))  # type: ignore[arg-type]
        if item is None:
            raise DialectError(f"{kind} about an output item never opened")
        try:
            _apply_delta(kind, event, item)
        except (KeyError, IndexError, TypeError) as exc:
            raise DialectError(f"{kind} does not fit its output item: {exc}") from None

    def result(self) -> dict[str, Any] | None:
        """The whole response once the stream ended with one, else None."""
        return self._final


def _delta_kind(kind: str) -> bool:
    return kind in (
        "response.content_part.added",
        "response.content_part.done",
        "response.output_text.delta",
        "response.output_text.done",
        "response.refusal.delta",
        "response.refusal.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    )


def _apply_delta(kind: str, event: dict[str, Any], item: dict[str, Any]) -> None:
    if kind.startswith("response.function_call_arguments."):
        if kind.endswith("delta"):
            item["arguments"] = item.get("arguments", "") + str(event["delta"])
        else:
            item["arguments"] = str(event["arguments"])
        return
    content: list[dict[str, Any]] = item.setdefault("content", [])
    index = event["content_index"]
    if kind == "response.content_part.added":
        if index != len(content):
            raise IndexError(f"content_index {index} opened out of turn")
        content.append(copy.deepcopy(event["part"]))
        return
    if kind == "response.content_part.done":
        content[index] = copy.deepcopy(event["part"])
        return
    part = content[index]
    if kind == "response.output_text.delta":
        part["text"] = part.get("text", "") + str(event["delta"])
    elif kind == "response.output_text.done":
        part["text"] = str(event["text"])
    elif kind == "response.refusal.delta":
        part["refusal"] = part.get("refusal", "") + str(event["delta"])
    else:
        part["refusal"] = str(event["refusal"])
