"""A fake teacher: an OpenAI-compatible server with exact control over its answers.

It answers ``/v1/chat/completions`` (stream or not, ``n``, tools with parallel calls,
``response_format`` json_schema, ``logprobs``, ``stream_options.include_usage``),
``/v1/responses`` (stream or not: the same answer as chat gives the request's chat view,
as a ``response`` object or its ``response.*`` events; ``GET``/``DELETE`` of the responses
it gave), ``/v1/models`` and ``/v1/embeddings`` in the wire format of the OpenAI OpenAPI
description, and echoes any other ``/v1/*`` request. Tests queue faults (:class:`Fault`)
and read what the teacher received (``requests``) and whether a stream was abandoned
(``cancelled``).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from core.dialects import responses as responses_api
from core.dialects.errors import DialectError
from core.wire import (
    SSE_DONE,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    CompletionTokensDetails,
    Delta,
    ErrorBody,
    FunctionCall,
    FunctionCallDelta,
    PromptTokensDetails,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Usage,
    sse,
)

MODEL_CREATED = 1_700_000_000


@dataclass
class Fault:
    """What the next chat completion does instead of answering normally."""

    status: int | None = None  # answer with this HTTP status and an OpenAI error body
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None  # raw body for the error answer (default: OpenAI-shaped)
    delay: float = 0.0  # seconds before the response starts
    cut_after: int | None = None  # stream: close the connection after this many events
    event_interval: float = 0.0  # stream: seconds between events


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeTeacher:
    def __init__(self) -> None:
        self.url = ""  # set once its server runs
        # Answers the text of a chat completion instead of the default echo, if set.
        self.responder: Callable[[dict[str, Any]], str] | None = None
        self.requests: list[Received] = []
        # Faults apply to the next chat completion or response, whichever comes first.
        self.faults: deque[Fault] = deque()
        self.responses: dict[str, dict[str, Any]] = {}  # by id, as OpenAI stores them
        # threading events: set on the fake's server thread, awaited by test code.
        self.cancelled = threading.Event()
        self.stream_finished = threading.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/responses", self.create_response, methods=["POST"]),
                Route(
                    "/v1/responses/{response_id}",
                    self.stored_response,
                    methods=["GET", "DELETE"],
                ),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route(
                    "/v1/{path:path}",
                    self.echo,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                ),
            ]
        )

    def chat_requests(self) -> list[Received]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    def responses_requests(self) -> list[Received]:
        return [r for r in self.requests if r.path == "/v1/responses"]

    async def _receive(self, request: Request) -> Received:
        received = Received(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.body(),
        )
        self.requests.append(received)
        return received

    async def _next_fault(self) -> tuple[Fault, Response | None]:
        """The fault queued for this answer (after its delay), and the error answer it
        stands for, if it is one."""
        fault = self.faults.popleft() if self.faults else Fault()
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status is None:
            return fault, None
        body = fault.body or _error(fault.status).model_dump_json().encode()
        failed = Response(
            body, status_code=fault.status, headers=fault.headers, media_type="application/json"
        )
        return fault, failed

    async def chat(self, request: Request) -> Response:
        received = await self._receive(request)
        fault, failed = await self._next_fault()
        if failed is not None:
            return failed
        payload = received.json()
        headers = {
            "x-request-id": "req_fake",
            "x-ratelimit-remaining-requests": "99",
            **fault.headers,
        }
        if payload.get("stream"):
            return StreamingResponse(
                self._stream(payload, fault),
                media_type="text/event-stream; charset=utf-8",
                headers=headers,
            )
        return JSONResponse(completion(payload, self.responder), headers=headers)

    async def _stream(self, payload: dict[str, Any], fault: Fault) -> AsyncIterator[bytes]:
        events = [sse(chunk) for chunk in chunks(payload, self.responder)]
        async for event in self._send(events, fault, end=SSE_DONE):
            yield event

    async def _send(
        self, events: list[bytes], fault: Fault, *, end: bytes = b""
    ) -> AsyncIterator[bytes]:
        """The events one by one (``end`` after them), as the fault paces or cuts them."""
        self.cancelled.clear()
        self.stream_finished.clear()
        try:
            for number, event in enumerate(events):
                if fault.cut_after is not None and number >= fault.cut_after:
                    raise ConnectionAbortedError("fake teacher cut the stream")
                if number and fault.event_interval:
                    await asyncio.sleep(fault.event_interval)
                yield event
            if end:
                yield end
            self.stream_finished.set()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def create_response(self, request: Request) -> Response:
        """``POST /v1/responses``: the answer chat would give the request's chat view."""
        received = await self._receive(request)
        fault, failed = await self._next_fault()
        if failed is not None:
            return failed
        payload = received.json()
        try:
            answer = completion(responses_api.chat_request(payload), self.responder)
        except DialectError as exc:
            return JSONResponse(exc.to_body(), status_code=exc.status_code)
        response = responses_api.response_object(
            answer, payload, response_id=f"resp_{uuid.uuid4().hex}", created_at=int(time.time())
        )
        if payload.get("store", True):
            self.responses[response["id"]] = response
        headers = {"x-request-id": "req_fake", **fault.headers}
        if payload.get("stream"):
            return StreamingResponse(
                self._send(responses_api.response_events(response), fault),
                media_type="text/event-stream; charset=utf-8",
                headers=headers,
            )
        return JSONResponse(response, headers=headers)

    async def stored_response(self, request: Request) -> Response:
        """``GET`` or ``DELETE /v1/responses/{id}`` of a response this teacher gave."""
        await self._receive(request)
        response_id = request.path_params["response_id"]
        if response_id not in self.responses:
            missing = ErrorBody.of(
                f"Response with id '{response_id}' not found.",
                error_type="invalid_request_error",
                param="response_id",
            )
            return JSONResponse(missing.model_dump(), status_code=404)
        if request.method == "DELETE":
            del self.responses[response_id]
            return JSONResponse({"id": response_id, "object": "response", "deleted": True})
        return JSONResponse(self.responses[response_id])

    async def models(self, request: Request) -> Response:
        await self._receive(request)
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": MODEL_CREATED, "owned_by": "fake"}
                    for name in ("gpt-4o-mini", "text-embedding-3-small")
                ],
            }
        )

    async def embeddings(self, request: Request) -> Response:
        received = await self._receive(request)
        payload = received.json()
        inputs = payload["input"] if isinstance(payload["input"], list) else [payload["input"]]
        data = []
        for index, text in enumerate(inputs):
            digest = hashlib.sha256(str(text).encode()).digest()
            data.append(
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": [round(b / 255 - 0.5, 6) for b in digest[:8]],
                }
            )
        tokens = sum(len(str(t).split()) for t in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": payload["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def echo(self, request: Request) -> Response:
        """What arrived, so tests can check the proxy changed nothing; ``?gzip=1`` answers
        gzip-compressed, ``?status=N`` with that status."""
        received = await self._receive(request)
        document = json.dumps(
            {
                "method": received.method,
                "path": received.path,
                "query": received.query,
                "body_sha256": hashlib.sha256(received.body).hexdigest(),
                "body_length": len(received.body),
                "headers": received.headers,
            }
        ).encode()
        status = int(request.query_params.get("status", "200"))
        headers = {"x-echo": "1", "set-cookie": "a=1"}
        if request.query_params.get("gzip"):
            return Response(
                gzip.compress(document),
                status_code=status,
                headers={**headers, "content-encoding": "gzip"},
                media_type="application/json",
            )
        return Response(
            document, status_code=status, headers=headers, media_type="application/json"
        )


def _error(status: int) -> ErrorBody:
    limited = status == 429
    return ErrorBody.of(
        f"fake teacher error {status}",
        error_type="rate_limit_error" if limited else "server_error",
        code="rate_limit_exceeded" if limited else None,
    )


def _last_user_text(payload: dict[str, Any]) -> str:
    for message in reversed(payload["messages"]):
        if message["role"] == "user":
            content = message["content"]
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content)
            return str(content)
    return ""


def _tool_calls(payload: dict[str, Any]) -> list[ToolCall] | None:
    tools = payload.get("tools") or []
    if not tools or payload.get("tool_choice") == "none":
        return None
    if payload["messages"][-1]["role"] == "tool":
        return None
    calls = []
    for number, tool in enumerate(tools[:2]):
        name = tool["function"]["name"]
        arguments = json.dumps({"query": _last_user_text(payload)})
        calls.append(
            ToolCall(
                id=f"call_{number}_{name}", function=FunctionCall(name=name, arguments=arguments)
            )
        )
    return calls


def answer_text(payload: dict[str, Any], index: int = 0) -> str:
    """The fake's deterministic answer to a request (choice ``index``)."""
    fmt = payload.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        properties = fmt["json_schema"].get("schema", {}).get("properties", {})
        return json.dumps({name: f"value of {name}" for name in properties})
    if fmt.get("type") == "json_object":
        return json.dumps({"answer": _last_user_text(payload)})
    suffix = f" (choice {index})" if index else ""
    return f"Answer to: {_last_user_text(payload)}{suffix}"


def _usage(payload: dict[str, Any], completion_tokens: int) -> Usage:
    prompt = sum(len(json.dumps(m).split()) for m in payload["messages"])
    usage = Usage.of(prompt, completion_tokens)
    usage.prompt_tokens_details = PromptTokensDetails(cached_tokens=0, audio_tokens=0)
    usage.completion_tokens_details = CompletionTokensDetails(
        reasoning_tokens=0,
        audio_tokens=0,
        accepted_prediction_tokens=0,
        rejected_prediction_tokens=0,
    )
    return usage


def _logprobs(text: str) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[TokenLogprob.of(word, -0.01 * (i + 1)) for i, word in enumerate(text.split(" "))]
    )


Responder = Callable[[dict[str, Any]], str]


def completion(payload: dict[str, Any], responder: Responder | None = None) -> dict[str, Any]:
    """The non-streamed answer, as the OpenAI API shapes it."""
    return _completion(payload, responder).model_dump(mode="json")


def _completion(payload: dict[str, Any], responder: Responder | None) -> ChatCompletion:
    choices = []
    completion_tokens = 0
    for index in range(payload.get("n") or 1):
        calls = _tool_calls(payload)
        if calls:
            text = None
        elif responder is not None:
            text = responder(payload)
        else:
            text = answer_text(payload, index)
        message = AssistantMessage(content=text, annotations=[])
        if calls:
            message.tool_calls = calls
        counted = text or json.dumps([call.model_dump() for call in calls or []])
        completion_tokens += len(counted.split())
        choices.append(
            Choice(
                index=index,
                message=message,
                logprobs=_logprobs(text) if payload.get("logprobs") and text else None,
                finish_reason="tool_calls" if calls else "stop",
            )
        )
    return ChatCompletion(
        id="chatcmpl-fake",
        created=int(time.time()),
        model=payload["model"],
        choices=choices,
        usage=_usage(payload, completion_tokens),
        service_tier="default",
        system_fingerprint="fp_fake",
    )


def chunks(
    payload: dict[str, Any], responder: Responder | None = None
) -> list[ChatCompletionChunk]:
    """The streamed answer, chunk by chunk, as the OpenAI API sends it: content word by
    word, tool-call arguments seven characters at a time."""
    include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    whole = _completion(payload, responder)
    out: list[ChatCompletionChunk] = []

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> None:
        piece = ChatCompletionChunk(
            id=whole.id,
            created=whole.created,
            model=whole.model,
            service_tier="default",
            system_fingerprint="fp_fake",
            choices=choices,
        )
        if include_usage:
            piece.usage = usage
        out.append(piece)

    for choice in whole.choices:
        for part in _choice_parts(choice):
            chunk([part])
    if include_usage:
        chunk([], usage=whole.usage)
    return out


def _choice_parts(choice: Choice) -> list[ChunkChoice]:
    index, message = choice.index, choice.message
    text = message.content
    opening = Delta(role="assistant", content="" if text is not None else None, refusal=None)
    parts = [ChunkChoice(index=index, delta=opening)]
    for number, call in enumerate(message.tool_calls or []):
        function = call.function or FunctionCall()
        arguments = function.arguments or ""
        name = FunctionCallDelta(name=function.name, arguments="")
        opened = ToolCallDelta(index=number, id=call.id, type="function", function=name)
        parts.append(ChunkChoice(index=index, delta=Delta(tool_calls=[opened])))
        for start in range(0, len(arguments), 7):
            more = FunctionCallDelta(arguments=arguments[start : start + 7])
            delta = Delta(tool_calls=[ToolCallDelta(index=number, function=more)])
            parts.append(ChunkChoice(index=index, delta=delta))
    if not message.tool_calls and text is not None:
        tokens = (choice.logprobs.content or []) if choice.logprobs else None
        for number, word in enumerate(text.split(" ")):
            logprobs = ChoiceLogprobs(content=[tokens[number]]) if tokens else None
            piece = Delta(content=word if number == 0 else " " + word)
            parts.append(ChunkChoice(index=index, delta=piece, logprobs=logprobs))
    parts.append(ChunkChoice(index=index, delta=Delta(), finish_reason=choice.finish_reason))
    return parts
