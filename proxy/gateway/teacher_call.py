"""Asking the teacher for one exchange and recording it: the one way a request reaches
the teacher, in any dialect (Chat Completions, Responses, Messages: see
``proxy.gateway.teacher_dialects``), for a client's request (plain or streamed, first or
as the fallback) and for an audit.

A whole answer is recorded as soon as it is read; a stream is relayed event by event as
it arrives and recorded, reassembled, when it ends. A call cancelled (the client went
away) is recorded as aborted, a failed one as the error it raises, a stream with an event
that breaks its dialect as an error.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

import anyio
import httpx
import orjson
from starlette.responses import Response, StreamingResponse

from core.dialects.errors import DialectError
from core.errors import StillroomError
from proxy.gateway.headers import RawHeaders, client_response_headers
from proxy.gateway.recording import EXCHANGE_ID_HEADER, ExchangeRecorder, Status
from proxy.gateway.streaming import EventSplitter
from proxy.gateway.teacher import Teacher
from proxy.gateway.teacher_dialects import CHAT, AnswerViews, TeacherDialect
from router.reasons import ServedBy

OnAnswer = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class WholeAnswer:
    """The teacher's answer, read whole (and recorded)."""

    status_code: int
    headers: RawHeaders  # the teacher's, as the client may see them
    content: bytes  # the teacher's body, or an error for an error status without one
    completion: dict[str, Any] | None  # the answer's chat view, when the teacher answered ok
    error: dict[str, Any] | None  # else the error, as recorded
    views: AnswerViews | None = None  # how the ok answer was recorded


@dataclass(frozen=True, slots=True)
class StreamedAnswer:
    """The teacher's answer as it streams: ``events`` relays it and records it at the end."""

    headers: RawHeaders
    events: AsyncIterator[bytes]


@overload
async def call_teacher(
    teacher: Teacher,
    recorder: ExchangeRecorder,
    *,
    served_by: ServedBy,
    headers: RawHeaders,
    body: bytes,
    stream: Literal[False] = False,
    strip_usage: bool = False,
    on_answer: OnAnswer | None = None,
    dialect: TeacherDialect = CHAT,
) -> WholeAnswer: ...


@overload
async def call_teacher(
    teacher: Teacher,
    recorder: ExchangeRecorder,
    *,
    served_by: ServedBy,
    headers: RawHeaders,
    body: bytes,
    stream: bool,
    strip_usage: bool = False,
    on_answer: OnAnswer | None = None,
    dialect: TeacherDialect = CHAT,
) -> WholeAnswer | StreamedAnswer: ...


async def call_teacher(
    teacher: Teacher,
    recorder: ExchangeRecorder,
    *,
    served_by: ServedBy,
    headers: RawHeaders,
    body: bytes,
    stream: bool = False,
    strip_usage: bool = False,
    on_answer: OnAnswer | None = None,
    dialect: TeacherDialect = CHAT,
) -> WholeAnswer | StreamedAnswer:
    """Send ``body``, a request in ``dialect``, to the teacher and record the exchange as
    ``served_by``. With ``stream``, an event stream comes back as a :class:`StreamedAnswer`
    (anything else, an error for one, whole). ``strip_usage``: the proxy asked for usage
    the client did not; it is kept out of the relayed stream. ``on_answer`` gets the
    complete answer's chat view if, and once, the teacher answered ok (a shadow's cue)."""
    started = time.perf_counter()
    with recorder.aborted_if_cancelled(served_by):
        try:
            response = await teacher.send("POST", dialect.path, headers=headers, content=body)
            if stream and _is_event_stream(response):
                relay = _Relay(recorder, served_by, dialect, strip_usage, on_answer, started)
                return StreamedAnswer(_decoded_headers(response), relay.events(response))
            content = await teacher.read(response)
        except StillroomError as exc:
            recorder.record(
                served_by=served_by,
                status="error",
                http_status=exc.status_code,
                response=exc.to_body(),
            )
            exc.headers[EXCHANGE_ID_HEADER] = recorder.id  # the error is an exchange too
            raise
    upstream_seconds = time.perf_counter() - started
    answer = _whole(response, content, dialect)
    views = answer.views
    recorder.record(
        served_by=served_by,
        status="ok" if answer.completion is not None else "error",
        http_status=response.status_code,
        response=answer.completion if answer.completion is not None else answer.error,
        upstream_seconds=upstream_seconds,
        client_response=views.client_response if views is not None else None,
        response_id=views.response_id if views is not None else None,
    )
    if answer.completion is not None and on_answer is not None:
        on_answer(answer.completion)
    return answer


def relayed(answer: WholeAnswer | StreamedAnswer, own: RawHeaders) -> Response:
    """The teacher's answer as the client gets it, with ``own`` headers added: the
    stream as it arrives, or the whole body with exactly the teacher's headers (repeated
    ones kept) and a fresh length."""
    if isinstance(answer, StreamedAnswer):
        streamed = StreamingResponse(answer.events, status_code=200)
        streamed.raw_headers = answer.headers + own
        return streamed
    response = Response(answer.content, status_code=answer.status_code)
    length = (b"content-length", str(len(answer.content)).encode())
    response.raw_headers = [*answer.headers, length, *own]
    return response


def _whole(response: httpx.Response, content: bytes, dialect: TeacherDialect) -> WholeAnswer:
    """The teacher's whole answer as the client gets it: an error status with a body that
    is no error of the dialect gets one instead, and so does an ok answer that cannot be
    read as one."""
    parsed = _json_or_none(content)
    status, headers = response.status_code, _decoded_headers(response)
    if status >= 400:
        error = parsed if dialect.is_error(parsed) else None
        if error is None:
            error = _wrapped_error(response, content, dialect)
            content = orjson.dumps(error)
        return WholeAnswer(status, headers, content, completion=None, error=error)
    if isinstance(parsed, dict):
        try:
            views = dialect.views(parsed)
        except DialectError:
            views = None
        if views is not None and views.completion is not None:
            return WholeAnswer(status, headers, content, views.completion, None, views)
    error = _wrapped_error(response, content, dialect)
    return WholeAnswer(status, headers, content, completion=None, error=error)


class _Relay:
    """Forwards each complete SSE event as it arrives; records the reassembled answer."""

    def __init__(
        self,
        recorder: ExchangeRecorder,
        served_by: ServedBy,
        dialect: TeacherDialect,
        strip_usage: bool,
        on_answer: OnAnswer | None,
        started: float,
    ) -> None:
        self.recorder = recorder
        self.served_by = served_by
        self.dialect = dialect
        self.assembler = dialect.assembler(strip_usage=strip_usage)
        self.on_answer = on_answer
        self.started = started
        self.first_byte: float | None = None
        self.first_chunk: float | None = None

    async def events(self, response: httpx.Response) -> AsyncIterator[bytes]:
        splitter = EventSplitter()
        assembler = self.assembler
        outcome = "aborted"
        try:
            async for data in response.aiter_bytes():
                if self.first_byte is None:
                    self.first_byte = time.perf_counter()
                for forwarded in self._take(splitter.feed(data)):
                    yield forwarded
                if assembler.malformed is not None:
                    break
            if assembler.malformed is not None:
                outcome = "malformed"
            else:
                outcome = ("error" if assembler.error else "ok") if assembler.done else "cut"
        except httpx.TimeoutException:
            outcome = "timeout"
        except httpx.HTTPError:
            outcome = "cut"
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
            self._record(outcome)
        if outcome in _FAILED:
            # The proxy ends the stream at a malformed event too, so it counts as cut.
            self.recorder.metrics.teacher_failures.labels(
                reason="timeout" if outcome == "timeout" else "stream_cut"
            ).inc()
            yield assembler.error_event(*_stream_error(outcome, assembler.malformed))

    def _take(self, events: list[bytes]) -> list[bytes]:
        """What to forward of ``events``, up to and including a malformed one.

        A malformed event is passed on as the teacher sent it, so a client fails on it as
        it would talking to the teacher (the openai SDK raises there), and the relay stops
        after it: the answer has a hole, and relaying the rest would hand a lenient client
        an answer that ends with ``[DONE]`` and looks whole. The error event that follows
        says why; the teacher's stream is closed, as nobody can use the rest of it."""
        forwarded: list[bytes] = []
        for event in events:
            out = self.assembler.add(event)
            if out is not None:
                if self.first_chunk is None:
                    self.first_chunk = time.perf_counter()
                forwarded.append(out)
            if self.assembler.malformed is not None:
                break
        return forwarded

    def _record(self, outcome: str) -> None:
        recorder = self.recorder
        if outcome == "aborted":  # the client went away: the generator was cancelled
            recorder.metrics.client_disconnects.inc()
        views = self._views()
        status: Status = "aborted"  # cut short, by the client or the teacher
        response = self.assembler.error or views.completion
        if outcome == "ok" and views.completion is None:
            outcome = "malformed"  # it ended, but as no answer of its dialect
        if outcome in ("ok", "error"):
            status = "ok" if outcome == "ok" else "error"
        elif outcome == "malformed":  # an answer with a hole: an error, never a pair
            status = "error"
            message, code = _stream_error(outcome, self.assembler.malformed)
            response = self.dialect.error_body(502, message, code)
        recorder.record(
            served_by=self.served_by,
            status=status,
            http_status=200,
            response=response,
            upstream_seconds=self.first_byte - self.started if self.first_byte else 0.0,
            first_chunk_seconds=self.first_chunk - recorder.started if self.first_chunk else None,
            client_response=views.client_response,
            response_id=views.response_id,
        )
        if outcome == "ok" and self.on_answer is not None and views.completion is not None:
            self.on_answer(views.completion)

    def _views(self) -> AnswerViews:
        """The reassembled answer as recorded; a partial one may have no chat view."""
        answer = self.assembler.answer()
        if answer is None:
            return AnswerViews(None, None, None)
        try:
            return self.dialect.views(answer)
        except DialectError:
            return AnswerViews(None, answer, None)


def _is_event_stream(response: httpx.Response) -> bool:
    content_type = response.headers.get("content-type", "")
    return response.status_code == 200 and content_type.startswith("text/event-stream")


# How a relayed stream can fail, with the message and code of the error event that ends it.
_FAILED = {
    "cut": ("the teacher stopped sending before the answer was complete", "teacher_stream_cut"),
    "timeout": (
        "the teacher went silent for longer than the read timeout mid-answer",
        "teacher_timeout",
    ),
    "malformed": (
        "the teacher sent an event that does not fit its stream, so the answer is incomplete",
        "teacher_stream_malformed",
    ),
}


def _stream_error(outcome: str, malformed: bytes | None) -> tuple[str, str]:
    """The message and code of the error that ends a stream that failed this way."""
    message, code = _FAILED[outcome]
    if malformed is not None:
        message += f": {malformed[:200].decode('utf-8', 'replace')!r}"
    return message, code


def _decoded_headers(response: httpx.Response) -> RawHeaders:
    return client_response_headers(list(response.headers.raw), decoded=True)


def _json_or_none(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def _wrapped_error(
    response: httpx.Response, content: bytes, dialect: TeacherDialect
) -> dict[str, Any]:
    """An error in the dialect's shape for a teacher answer that was not one."""
    text = content.decode("utf-8", "replace").strip()[:500]
    message = f"the teacher answered HTTP {response.status_code}: {text or '(empty)'}"
    status = response.status_code if response.status_code >= 400 else 502
    return dialect.error_body(status, message, "teacher_invalid_response")
