"""What a teacher call needs to know of the API it speaks: the path, how its answers and
errors look, and how its stream is put back together.

One teacher call (:func:`proxy.gateway.teacher_call.call_teacher`) serves every dialect;
each passes a :class:`TeacherDialect`. Chat Completions is :data:`CHAT`; the Responses API
and Anthropic's Messages bring theirs (``proxy.gateway.responses``,
``proxy.gateway.messages``), built on the conversions of ``core.dialects``. Whatever the
dialect, the exchange is recorded in its Chat Completions view (a ``chat.completion``),
with the answer as the client got it and the id it saw.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from core.dialects.errors import DialectError
from core.tables import Dialect
from core.wire import ErrorBody, sse
from proxy.gateway.streaming import StreamAssembler, event_data
from proxy.gateway.teacher import CHAT_PATH

# What reading a teacher's document that is not what its dialect says may raise: a
# pydantic ValidationError (a ValueError), or a field of the wrong kind met on the way.
_UNREADABLE = (ValueError, TypeError, AttributeError, KeyError, IndexError)


class AnswerAssembler(Protocol):
    """Watches the events of a teacher's stream and rebuilds the whole answer."""

    done: bool  # the stream said it was complete (its last event came)
    error: dict[str, Any] | None  # the error the teacher streamed instead of an answer
    malformed: bytes | None  # the data of the first event that breaks the dialect

    def add(self, event: bytes) -> bytes | None:
        """Take one event; return what to forward to the client (None: nothing)."""

    def answer(self) -> dict[str, Any] | None:
        """The answer as a non-streamed call would have returned it (for chat, partial if
        the stream was cut; the other dialects keep none until their last event)."""

    def error_event(self, message: str, code: str) -> bytes:
        """The event that ends a stream the teacher broke, in the dialect's shape."""


@dataclass(frozen=True, slots=True)
class AnswerViews:
    """A teacher's answer as stillroom records it."""

    completion: dict[str, Any] | None  # its chat.completion view (None: none can be made)
    client_response: dict[str, Any] | None  # the answer as the client got it (not chat)
    response_id: str | None  # the id the client saw (not chat)


class TeacherDialect(ABC):
    """The parts of a teacher call that differ by the API the client speaks."""

    name: Dialect
    path: str  # the teacher's path for it, under /v1

    def views(self, answer: dict[str, Any]) -> AnswerViews:
        """How a teacher's whole (ok) answer is recorded; :class:`DialectError` for one
        that cannot be read as an answer of this dialect."""
        try:
            return self.read(answer)
        except _UNREADABLE as exc:
            raise DialectError(f"not an answer of the {self.name} API: {exc!r}") from None

    @abstractmethod
    def read(self, answer: dict[str, Any]) -> AnswerViews:
        """The views of ``answer``; any error of :data:`_UNREADABLE` means it is none."""

    @abstractmethod
    def is_error(self, body: Any) -> bool:
        """Whether ``body``, the JSON of an error status, is an error in this API's shape."""

    @abstractmethod
    def error_body(self, status: int, message: str, code: str) -> dict[str, Any]:
        """An error of stillroom's own in this API's shape."""

    @abstractmethod
    def assembler(self, *, strip_usage: bool) -> AnswerAssembler:
        """A fresh assembler for one stream of this API."""


class ChatDialect(TeacherDialect):
    """OpenAI Chat Completions: the canonical view itself."""

    name: Dialect = "chat"
    path = CHAT_PATH

    def read(self, answer: dict[str, Any]) -> AnswerViews:
        return AnswerViews(answer, None, None)

    def is_error(self, body: Any) -> bool:
        return isinstance(body, dict) and "error" in body

    def error_body(self, status: int, message: str, code: str) -> dict[str, Any]:
        return ErrorBody.of(message, error_type="api_error", code=code).model_dump()

    def assembler(self, *, strip_usage: bool) -> AnswerAssembler:
        return _ChatAssembler(strip_usage=strip_usage)


class _ChatAssembler(StreamAssembler):
    def answer(self) -> dict[str, Any] | None:
        return self.completion()

    def error_event(self, message: str, code: str) -> bytes:
        return sse(ErrorBody.of(message, error_type="api_error", code=code))


CHAT = ChatDialect()


class DialectAssembler(Protocol):
    """The shape of ``core.dialects``' stream assemblers, once fed."""

    @property
    def status(self) -> str:
        """``ok`` or ``error`` once the stream's last event came; ``aborted`` before."""

    def result(self) -> dict[str, Any] | None: ...


EventFeed = Callable[[str | None, dict[str, Any]], None]  # (SSE event name, its data)
ErrorEvent = Callable[[str, str, int], bytes]  # (message, code, next sequence number)


class NamedEventAssembler:
    """An :class:`AnswerAssembler` over a ``core.dialects`` assembler, for the APIs whose
    stream events carry a type (``event: response.created``, ``event: message_start``):
    each event's JSON is fed to it, and an event that is no JSON object, or that it
    refuses (:class:`DialectError`), is the stream's malformed event."""

    def __init__(self, inner: DialectAssembler, feed: EventFeed, error_event: ErrorEvent) -> None:
        self.inner = inner
        self._feed = feed
        self._error_event = error_event
        self.done = False
        self.error: dict[str, Any] | None = None
        self.malformed: bytes | None = None
        self._sequence = 0

    def add(self, event: bytes) -> bytes | None:
        data = event_data(event)
        if data is None or self.malformed is not None or self.done:
            return event
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            self.malformed = data
            return event
        sequence = parsed.get("sequence_number")
        if isinstance(sequence, int):
            self._sequence = sequence + 1
        try:
            self._feed(_event_name(event), parsed)
        except (DialectError, *_UNREADABLE):
            self.malformed = data
            return event
        status = self.inner.status
        if status in ("ok", "error"):
            self.done = True
        if status == "error":
            self.error = parsed
        return event

    def answer(self) -> dict[str, Any] | None:
        return self.inner.result()

    def error_event(self, message: str, code: str) -> bytes:
        return self._error_event(message, code, self._sequence)


def _event_name(event: bytes) -> str | None:
    for line in event.splitlines():
        if line.startswith(b"event:"):
            return line[6:].strip().decode("utf-8", "replace")
    return None
