"""A fake Anthropic Messages API: an Anthropic-speaking teacher with exact control over
its answers.

It answers ``POST /v1/messages`` (whole, or streamed as ``message_start``,
``content_block_start``/``delta``/``stop``, ``ping``, ``message_delta`` and
``message_stop``; text, and ``tool_use`` blocks whose input comes as ``input_json_delta``
pieces) and ``POST /v1/messages/count_tokens``. Its answer is the fake OpenAI teacher's
answer to the request's chat view (:func:`fakes.teacher.completion`), written as a
message. A system block marked ``cache_control`` is written to the prompt cache the
first time (``cache_creation_input_tokens``) and read from it after
(``cache_read_input_tokens``). It checks ``x-api-key`` (or a bearer ``Authorization``)
and ``anthropic-version`` as Anthropic does, and answers errors in Anthropic's shape and
status codes, with ``retry-after`` on 429 and 529. Tests queue faults (a
:class:`fakes.teacher.Fault`, or a :class:`StreamError` for an ``error`` event mid-stream)
and read what it received (``requests``) and whether a stream was abandoned (``cancelled``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from core.dialects import messages as messages_api
from core.dialects.errors import DialectError
from core.wire.messages import MessageUsage

from fakes.teacher import Fault, Received, completion

API_VERSION = "2023-06-01"


@dataclass
class StreamError:
    """The next stream sends ``after`` events, then an ``error`` event for ``status``
    (529: ``overloaded_error``, as Anthropic's streams fail under load)."""

    after: int
    status: int = 529


class FakeAnthropic:
    def __init__(self, *, api_key: str | None = None) -> None:
        self.url = ""  # set once its server runs
        self.api_key = api_key  # when set, the only key it takes
        # Answers the text of a message instead of the default echo, if set.
        self.responder: Callable[[dict[str, Any]], str] | None = None
        self.requests: list[Received] = []
        self.faults: deque[Fault | StreamError] = deque()
        self._cached: set[str] = set()  # system prompts in the prompt cache
        # threading events: set on the fake's server thread, awaited by test code.
        self.cancelled = threading.Event()  # a stream was abandoned by its client
        self.stream_finished = threading.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/messages", self.create_message, methods=["POST"]),
                Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
            ]
        )

    def message_requests(self) -> list[Received]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    async def _receive(self, request: Request) -> tuple[Received, Response | None]:
        received = Received(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.body(),
        )
        self.requests.append(received)
        return received, self._refusal(received.headers)

    def _refusal(self, headers: dict[str, str]) -> Response | None:
        """Anthropic's answer to a request without a valid key or API version."""
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        if not key or (self.api_key is not None and key != self.api_key):
            return _error(401, "invalid x-api-key")
        if "anthropic-version" not in headers:
            return _error(400, "anthropic-version: header is required")
        return None

    async def create_message(self, request: Request) -> Response:
        received, refused = await self._receive(request)
        if refused is not None:
            return refused
        fault = self.faults.popleft() if self.faults else Fault()
        if isinstance(fault, Fault):
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                return _error(fault.status, f"fake anthropic error {fault.status}", fault.headers)
        try:
            body = received.json()
            message = self._message(body)
        except (DialectError, json.JSONDecodeError) as exc:
            return _error(400, getattr(exc, "message", str(exc)))
        headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}"}
        if not body.get("stream"):
            return JSONResponse(message, headers=headers)
        events = messages_api.message_events(message)
        return StreamingResponse(
            self._send(events, fault),
            media_type="text/event-stream; charset=utf-8",
            headers=headers,
        )

    def _message(self, body: dict[str, Any]) -> dict[str, Any]:
        chat = messages_api.chat_request(body)
        answer = completion(chat, self.responder)
        message = messages_api.message_object(
            answer, body, message_id=f"msg_{uuid.uuid4().hex[:24]}"
        )
        message["usage"] = self._usage(body, chat, answer["usage"]["completion_tokens"])
        return message

    def _usage(self, body: dict[str, Any], chat: dict[str, Any], output: int) -> dict[str, Any]:
        prompt = _tokens(chat)
        cached = _cached_system(body)
        usage = MessageUsage(input_tokens=prompt, output_tokens=output, service_tier="standard")
        if cached:
            size = min(prompt, len(cached.split()))
            usage.input_tokens = prompt - size
            if cached in self._cached:
                usage.cache_read_input_tokens = size
            else:
                usage.cache_creation_input_tokens = size
                self._cached.add(cached)
        return usage.model_dump(mode="json")

    async def _send(self, events: list[bytes], fault: Fault | StreamError) -> AsyncIterator[bytes]:
        self.cancelled.clear()
        self.stream_finished.clear()
        try:
            for number, event in enumerate(events):
                if isinstance(fault, StreamError) and number == fault.after:
                    error = messages_api.error_body(fault.status, "Overloaded")
                    yield b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
                    return
                if isinstance(fault, Fault):
                    if fault.cut_after is not None and number >= fault.cut_after:
                        raise ConnectionAbortedError("fake anthropic cut the stream")
                    if number and fault.event_interval:
                        await asyncio.sleep(fault.event_interval)
                yield event
            self.stream_finished.set()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def count_tokens(self, request: Request) -> Response:
        """What the prompt of a message would count: the same as its ``usage`` says."""
        received, refused = await self._receive(request)
        if refused is not None:
            return refused
        body = received.json()
        try:
            chat = messages_api.chat_request({"max_tokens": 1, **body})
        except DialectError as exc:
            return _error(400, exc.message)
        return JSONResponse({"input_tokens": _tokens(chat)})


def _tokens(chat: dict[str, Any]) -> int:
    """The fake's token count of a prompt: the fake OpenAI teacher's."""
    return sum(len(json.dumps(message).split()) for message in chat["messages"])


def _cached_system(body: dict[str, Any]) -> str:
    """The system text up to its last block marked for the prompt cache."""
    system = body.get("system")
    if not isinstance(system, list):
        return ""
    marked = [n for n, block in enumerate(system) if block.get("cache_control")]
    if not marked:
        return ""
    return "\n".join(block.get("text", "") for block in system[: marked[-1] + 1])


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    sent = {"request-id": f"req_{uuid.uuid4().hex[:24]}", **(headers or {})}
    if status in (429, 529):
        sent.setdefault("retry-after", "1")
    body = {**messages_api.error_body(status, message), "request_id": sent["request-id"]}
    return JSONResponse(body, status_code=status, headers=sent)
