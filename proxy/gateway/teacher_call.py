"""Asking the teacher for one exchange and recording it: the one way a chat completion
reaches the teacher, for a client's request (plain or streamed, first or as the fallback)
and for an audit.

A whole answer is recorded as soon as it is read; a stream is relayed event by event as
it arrives and recorded, reassembled, when it ends. A call cancelled (the client went
away) is recorded as aborted, a failed one as the error it raises, a stream with an event
that is no chunk as an error.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

import anyio
import httpx
import orjson

from core.errors import StillroomError
from core.wire import ErrorBody, sse
from proxy.gateway.headers import RawHeaders, client_response_headers
from proxy.gateway.recording import ExchangeRecorder, Status
from proxy.gateway.streaming import EventSplitter, StreamAssembler
from proxy.gateway.teacher import CHAT_PATH, Teacher
from router.reasons import ServedBy

OnAnswer = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class WholeAnswer:
    """The teacher's answer, read whole (and recorded)."""

    status_code: int
    headers: RawHeaders  # the teacher's, as the client may see them
    content: bytes  # the teacher's body, or an OpenAI error for an error status without one
    completion: dict[str, Any] | None  # the answer, when the teacher answered ok
    error: dict[str, Any] | None  # else the error, as recorded


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
) -> WholeAnswer | StreamedAnswer:
    """Send the chat completion ``body`` to the teacher and record the exchange as
    ``served_by``. With ``stream``, an event stream comes back as a :class:`StreamedAnswer`
    (anything else, an error for one, whole). ``strip_usage``: the proxy asked for usage
    the client did not; it is kept out of the relayed stream. ``on_answer`` gets the
    complete answer if, and once, the teacher answered ok (a shadow's cue)."""
    started = time.perf_counter()
    with recorder.aborted_if_cancelled(served_by):
        try:
            response = await teacher.send("POST", CHAT_PATH, headers=headers, content=body)
            if stream and _is_event_stream(response):
                relay = _Relay(recorder, served_by, strip_usage, on_answer, started)
                return StreamedAnswer(_decoded_headers(response), relay.events(response))
            content = await teacher.read(response)
        except StillroomError as exc:
            recorder.record(
                served_by=served_by,
                status="error",
                http_status=exc.status_code,
                response=exc.to_body(),
            )
            raise
    upstream_seconds = time.perf_counter() - started
    answer = _whole(response, content)
    recorder.record(
        served_by=served_by,
        status="ok" if answer.completion is not None else "error",
        http_status=response.status_code,
        response=answer.completion if answer.completion is not None else answer.error,
        upstream_seconds=upstream_seconds,
    )
    if answer.completion is not None and on_answer is not None:
        on_answer(answer.completion)
    return answer


def _whole(response: httpx.Response, content: bytes) -> WholeAnswer:
    """The teacher's whole answer as the client gets it: an error status with a body that
    is no OpenAI error gets one instead."""
    parsed = _json_or_none(content)
    status, headers = response.status_code, _decoded_headers(response)
    if status >= 400:
        error = parsed if isinstance(parsed, dict) and "error" in parsed else None
        if error is None:
            error = _wrapped_error(response, content)
            content = orjson.dumps(error)
        return WholeAnswer(status, headers, content, completion=None, error=error)
    if isinstance(parsed, dict):
        return WholeAnswer(status, headers, content, completion=parsed, error=None)
    return WholeAnswer(
        status, headers, content, completion=None, error=_wrapped_error(response, content)
    )


class _Relay:
    """Forwards each complete SSE event as it arrives; records the reassembled answer."""

    def __init__(
        self,
        recorder: ExchangeRecorder,
        served_by: ServedBy,
        strip_usage: bool,
        on_answer: OnAnswer | None,
        started: float,
    ) -> None:
        self.recorder = recorder
        self.served_by = served_by
        self.assembler = StreamAssembler(strip_usage=strip_usage)
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
            yield sse(_stream_error(outcome, assembler.malformed))

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
        completion = self.assembler.completion()
        status: Status = "aborted"  # cut short, by the client or the teacher
        response = self.assembler.error or completion
        if outcome in ("ok", "error"):
            status = "ok" if outcome == "ok" else "error"
        elif outcome == "malformed":  # an answer with a hole: an error, never a pair
            status = "error"
            response = _stream_error(outcome, self.assembler.malformed).model_dump()
        recorder.record(
            served_by=self.served_by,
            status=status,
            http_status=200,
            response=response,
            upstream_seconds=self.first_byte - self.started if self.first_byte else 0.0,
            first_chunk_seconds=self.first_chunk - recorder.started if self.first_chunk else None,
        )
        if outcome == "ok" and self.on_answer is not None:
            self.on_answer(completion)


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
        "the teacher sent an event that is not a chat completion chunk, so the answer "
        "is incomplete",
        "teacher_stream_malformed",
    ),
}


def _stream_error(outcome: str, malformed: bytes | None) -> ErrorBody:
    message, code = _FAILED[outcome]
    if malformed is not None:
        message += f": {malformed[:200].decode('utf-8', 'replace')!r}"
    return ErrorBody.of(message, error_type="api_error", code=code)


def _decoded_headers(response: httpx.Response) -> RawHeaders:
    return client_response_headers(list(response.headers.raw), decoded=True)


def _json_or_none(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def _wrapped_error(response: httpx.Response, content: bytes) -> dict[str, Any]:
    """An OpenAI-shaped error for a teacher answer that was not one."""
    text = content.decode("utf-8", "replace").strip()[:500]
    return {
        "error": {
            "message": f"the teacher answered HTTP {response.status_code}: {text or '(empty)'}",
            "type": "api_error",
            "param": None,
            "code": "teacher_invalid_response",
        }
    }
