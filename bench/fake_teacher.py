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
_USAGE = {
    "prompt_tokens": 231,
    "completion_tokens": 17,
    "total_tokens": 248,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}
COMPLETION = orjson.dumps(
    {
        "id": _ID,
        "object": "chat.completion",
        "created": _CREATED,
        "model": _MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "".join(_PIECES),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _USAGE,
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }
)
TEACHER_HEADERS = [
    (b"openai-organization", b"bench-org"),
    (b"openai-processing-ms", b"412"),
    (b"openai-version", b"2020-10-01"),
    (b"x-ratelimit-limit-requests", b"30000"),
    (b"x-ratelimit-remaining-requests", b"29999"),
    (b"x-request-id", b"req_4f1c0e6b7a9d4d2f8e3b1a0c9d8e7f6a"),
]


def _event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    chunk = {
        "id": _ID,
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": _MODEL,
        "system_fingerprint": _FINGERPRINT,
        "choices": choices,
        **extra,
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def stream_events(*, include_usage: bool) -> list[bytes]:
    """Role chunk, content chunks, finish chunk, the usage chunk if asked, ``[DONE]``."""
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _event([choice], **extra)

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": piece}) for piece in _PIECES]
    events.append(chunk({}, "stop"))
    if include_usage:
        events.append(_event([], usage=_USAGE))
    return [*events, b"data: [DONE]\n\n"]


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
        await _send_whole(send, 404, b'{"error":{"message":"not found","type":"invalid"}}')


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
