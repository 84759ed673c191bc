"""``POST /v1/chat/completions``: forwarded to the teacher, streamed back, recorded."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from core.errors import StillroomError
from core.tasks import TASK_HEADER, identify_task
from proxy.body import parse_chat_request, parse_json_object, read_body
from proxy.headers import RawHeaders, client_response_headers, teacher_request_headers
from proxy.recording import ExchangeRecorder
from proxy.routing import route
from proxy.runtime import Runtime
from proxy.streaming import EventSplitter, StreamAssembler
from proxy.teacher import CHAT_PATH

# Status nginx uses for "client closed request"; nobody is left to read it.
CLIENT_CLOSED = 499


async def chat_completions(request: Request, runtime: Runtime) -> Response:
    """Forward one chat completion to the teacher and record the exchange."""
    started = time.perf_counter()
    settings = runtime.settings
    body = await read_body(request, limit=settings.max_body_bytes)
    payload = parse_json_object(body)
    chat = parse_chat_request(payload)
    task = identify_task(request.headers.get(TASK_HEADER), chat)
    recorder = ExchangeRecorder(
        settings=settings,
        metrics=runtime.metrics,
        capture=runtime.capture,
        task=task,
        payload=payload,
        stream=bool(chat.stream),
        started=started,
    )
    strip_usage = (
        bool(chat.stream)
        and settings.stream_usage
        and not (chat.stream_options and chat.stream_options.include_usage)
    )
    if strip_usage:
        options = payload.get("stream_options") or {}
        body = orjson.dumps({**payload, "stream_options": {**options, "include_usage": True}})
    headers = teacher_request_headers(request.headers.raw, teacher_key=runtime.teacher_key)
    routing = await route(request, runtime, chat, payload, recorder, headers)
    if routing is not None:
        return routing
    if chat.stream:
        return await _stream(request, runtime, recorder, headers, body, strip_usage)
    return await _complete(request, runtime, recorder, headers, body)


async def _complete(
    request: Request,
    runtime: Runtime,
    recorder: ExchangeRecorder,
    headers: RawHeaders,
    body: bytes,
) -> Response:
    teacher = runtime.teacher
    upstream_started = time.perf_counter()

    async def call() -> tuple[httpx.Response, bytes]:
        response = await teacher.send("POST", CHAT_PATH, headers=headers, content=body)
        return response, await teacher.read(response)

    call_task = asyncio.ensure_future(call())
    disconnect_task = asyncio.ensure_future(_client_disconnected(request))
    try:
        await asyncio.wait({call_task, disconnect_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect_task.cancel()
    if not call_task.done():
        call_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, StillroomError):
            await call_task
        runtime.metrics.client_disconnects.inc()
        recorder.record(status="aborted", http_status=CLIENT_CLOSED, response=None)
        return Response(status_code=CLIENT_CLOSED)
    try:
        response, content = call_task.result()
    except StillroomError as exc:
        recorder.record(status="error", http_status=exc.status_code, response=exc.to_body())
        raise
    recorder.upstream_seconds = time.perf_counter() - upstream_started
    return _answer(recorder, response, content)


def _answer(recorder: ExchangeRecorder, response: httpx.Response, content: bytes) -> Response:
    """The teacher's whole (non-streamed) answer, passed on and recorded."""
    parsed = _json_or_none(content)
    if response.status_code >= 400:
        body = parsed if isinstance(parsed, dict) and "error" in parsed else None
        if body is None:
            body = _wrapped_error(response, content)
            content = orjson.dumps(body)
        recorder.record(status="error", http_status=response.status_code, response=body)
    elif isinstance(parsed, dict):
        recorder.record(status="ok", http_status=response.status_code, response=parsed)
    else:
        recorder.record(
            status="error",
            http_status=response.status_code,
            response=_wrapped_error(response, content),
        )
    return _response(content, response.status_code, _decoded_headers(response) + recorder.headers())


def _response(content: bytes, status_code: int, headers: RawHeaders) -> Response:
    """A response with exactly these headers (repeated ones kept) and a fresh length."""
    response = Response(content, status_code=status_code)
    response.raw_headers = [*headers, (b"content-length", str(len(content)).encode())]
    return response


async def _stream(
    request: Request,
    runtime: Runtime,
    recorder: ExchangeRecorder,
    headers: RawHeaders,
    body: bytes,
    strip_usage: bool,
) -> Response:
    teacher = runtime.teacher
    upstream_started = time.perf_counter()
    try:
        response = await teacher.send("POST", CHAT_PATH, headers=headers, content=body)
    except StillroomError as exc:
        recorder.record(status="error", http_status=exc.status_code, response=exc.to_body())
        raise
    content_type = response.headers.get("content-type", "")
    if response.status_code != 200 or not content_type.startswith("text/event-stream"):
        try:
            content = await teacher.read(response)
        except StillroomError as exc:
            recorder.record(status="error", http_status=exc.status_code, response=exc.to_body())
            raise
        return _answer(recorder, response, content)
    streamed = StreamingResponse(
        _relay(runtime, recorder, response, strip_usage, upstream_started), status_code=200
    )
    streamed.raw_headers = _decoded_headers(response) + recorder.headers()
    return streamed


async def _relay(
    runtime: Runtime,
    recorder: ExchangeRecorder,
    response: httpx.Response,
    strip_usage: bool,
    upstream_started: float,
) -> AsyncIterator[bytes]:
    """Forward each complete SSE event as it arrives; record the reassembled answer."""
    splitter = EventSplitter()
    assembler = StreamAssembler(strip_usage=strip_usage)
    first_chunk: float | None = None
    first_byte: float | None = None
    outcome = "aborted"
    try:
        async for data in response.aiter_bytes():
            if first_byte is None:
                first_byte = time.perf_counter()
            for event in splitter.feed(data):
                forwarded = assembler.add(event)
                if forwarded is not None:
                    if first_chunk is None:
                        first_chunk = time.perf_counter()
                    yield forwarded
        outcome = ("error" if assembler.error else "ok") if assembler.done else "cut"
    except httpx.TimeoutException:
        outcome = "timeout"
    except httpx.HTTPError:
        outcome = "cut"
    finally:
        with anyio.CancelScope(shield=True):
            await response.aclose()
        if outcome == "aborted":  # the client went away: this generator was cancelled
            runtime.metrics.client_disconnects.inc()
        if first_byte is not None:
            recorder.upstream_seconds = first_byte - upstream_started
        status = outcome if outcome in ("ok", "error") else "aborted"
        recorder.record(
            status=status,
            http_status=200,
            response=assembler.error or assembler.completion(),
            first_chunk_seconds=first_chunk - recorder.started if first_chunk else None,
        )
    if outcome in ("cut", "timeout"):
        runtime.metrics.teacher_failures.labels(
            reason="timeout" if outcome == "timeout" else "stream_cut"
        ).inc()
        yield _error_event(outcome)


def _error_event(outcome: str) -> bytes:
    message = (
        "the teacher stopped sending before the answer was complete"
        if outcome == "cut"
        else "the teacher went silent for longer than the read timeout mid-answer"
    )
    error = {
        "error": {
            "message": message,
            "type": "api_error",
            "param": None,
            "code": "teacher_stream_cut" if outcome == "cut" else "teacher_timeout",
        }
    }
    return b"data: " + orjson.dumps(error) + b"\n\n"


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


async def _client_disconnected(request: Request) -> None:
    """Return when the client closes the connection (after its body was read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
