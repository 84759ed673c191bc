"""The fake teacher of the overhead benchmark: an OpenAI-compatible ASGI app that answers
every chat completion at once, with canned bodies and streams in OpenAI's wire format.

It runs under uvicorn (uvloop, httptools) in a process of its own, started by
``overhead.py --serve-teacher PORT``, so that it costs the proxy as little as a teacher can.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvicorn

from core.wire import (
    SSE_DONE,
    ChatCompletion,
    ChatCompletionChunk,
    ChunkChoice,
    CompletionTokensDetails,
    Delta,
    ErrorBody,
    FinishReason,
    PromptTokensDetails,
    Usage,
    sse,
)

CHAT = "/v1/chat/completions"

_ID, _CREATED, _MODEL, _FINGERPRINT = (
    "chatcmpl-BmQy3XkV0y9rT2cWq8aJxZk1fLh7P",
    1_741_569_952,
    "gpt-4o-mini-2024-07-18",
    "fp_06737a9306",
)
_PIECES = (
    "billing.refund",
    ": the customer",
    " was charged twice",
    " for March",
    " and wants one back.",
)
_TIER = "default"


def _usage() -> Usage:
    usage = Usage.of(231, 17)
    usage.prompt_tokens_details = PromptTokensDetails(cached_tokens=0, audio_tokens=0)
    usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=0, audio_tokens=0)
    return usage


def _whole_answer() -> ChatCompletion:
    answer = "".join(_PIECES)
    completion = ChatCompletion.from_text(
        answer, model=_MODEL, id=_ID, created=_CREATED, usage=_usage()
    )
    completion.service_tier = _TIER
    completion.system_fingerprint = _FINGERPRINT
    return completion


# Serialised once: the benchmark measures the proxy, so the teacher does no work per request.
COMPLETION = _whole_answer().model_dump_json().encode()
NOT_FOUND = ErrorBody.of("not found", error_type="invalid_request_error").model_dump_json().encode()
TEACHER_HEADERS = [
    (b"openai-organization", b"bench-org"),
    (b"openai-processing-ms", b"412"),
    (b"openai-version", b"2020-10-01"),
    (b"x-ratelimit-limit-requests", b"30000"),
    (b"x-ratelimit-remaining-requests", b"29999"),
    (b"x-request-id", b"req_4f1c0e6b7a9d4d2f8e3b1a0c9d8e7f6a"),
]


def stream_events(*, include_usage: bool) -> list[bytes]:
    """Role chunk, content chunks, finish chunk, the usage chunk if asked, ``[DONE]``."""
    head: dict[str, Any] = {
        "id": _ID,
        "created": _CREATED,
        "model": _MODEL,
        "service_tier": _TIER,
        "system_fingerprint": _FINGERPRINT,
    }
    if include_usage:
        head["usage"] = None  # every chunk before the usage chunk says "usage": null

    def chunk(delta: Delta, finish: FinishReason | None = None) -> bytes:
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish)
        return sse(ChatCompletionChunk.model_validate({**head, "choices": [choice]}))

    events = [chunk(Delta(role="assistant", content=""))]
    events += [chunk(Delta(content=piece)) for piece in _PIECES]
    events.append(chunk(Delta(), "stop"))
    if include_usage:
        usage = {**head, "choices": [], "usage": _usage()}
        events.append(sse(ChatCompletionChunk.model_validate(usage)))
    return [*events, SSE_DONE]


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_STREAMS = {flag: stream_events(include_usage=flag) for flag in (False, True)}


async def teacher_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """An OpenAI-compatible teacher that answers every chat completion at once."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "POST" and scope["path"] == CHAT:
        request = orjson.loads(body)
        if request.get("stream"):
            options = request.get("stream_options") or {}
            await _send_stream(send, _STREAMS[bool(options.get("include_usage"))])
        else:
            await _send_whole(send, 200, COMPLETION)
    elif scope["path"] in ("/healthz", "/v1/models"):
        await _send_whole(send, 200, b'{"object":"list","data":[]}')
    else:
        await _send_whole(send, 404, NOT_FOUND)


async def _send_whole(send: Send, status: int, content: bytes) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        *TEACHER_HEADERS,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


async def _send_stream(send: Send, events: list[bytes]) -> None:
    headers = [(b"content-type", b"text/event-stream; charset=utf-8"), *TEACHER_HEADERS]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for event in events:
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def serve_teacher(port: int) -> None:
    """Serve ``teacher_app`` on 127.0.0.1:``port`` until terminated."""
    uvicorn.run(
        teacher_app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )
