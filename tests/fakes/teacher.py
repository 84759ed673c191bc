"""A fake teacher: an OpenAI-compatible server with exact control over its answers.

It answers ``/v1/chat/completions`` (stream or not, ``n``, tools with parallel calls,
``response_format`` json_schema, ``logprobs``, ``stream_options.include_usage``),
``/v1/models`` and ``/v1/embeddings`` in the wire format of the OpenAI OpenAPI description,
and echoes any other ``/v1/*`` request. Tests queue faults (:class:`Fault`) and read what
the teacher received (``requests``) and whether a stream was abandoned (``cancelled``).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

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
        self.faults: deque[Fault] = deque()
        # threading events: set on the fake's server thread, awaited by test code.
        self.cancelled = threading.Event()
        self.stream_finished = threading.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
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

    async def chat(self, request: Request) -> Response:
        received = await self._receive(request)
        fault = self.faults.popleft() if self.faults else Fault()
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status is not None:
            body = (
                fault.body
                or json.dumps(
                    {
                        "error": {
                            "message": f"fake teacher error {fault.status}",
                            "type": "rate_limit_error" if fault.status == 429 else "server_error",
                            "param": None,
                            "code": "rate_limit_exceeded" if fault.status == 429 else None,
                        }
                    }
                ).encode()
            )
            return Response(
                body, status_code=fault.status, headers=fault.headers, media_type="application/json"
            )
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
        self.cancelled.clear()
        self.stream_finished.clear()
        try:
            for number, chunk in enumerate(chunks(payload, self.responder)):
                if fault.cut_after is not None and number >= fault.cut_after:
                    raise ConnectionAbortedError("fake teacher cut the stream")
                if number and fault.event_interval:
                    await asyncio.sleep(fault.event_interval)
                yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"
            self.stream_finished.set()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

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


def _last_user_text(payload: dict[str, Any]) -> str:
    for message in reversed(payload["messages"]):
        if message["role"] == "user":
            content = message["content"]
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content)
            return str(content)
    return ""


def _tool_calls(payload: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = payload.get("tools") or []
    if not tools or payload.get("tool_choice") == "none":
        return None
    if payload["messages"][-1]["role"] == "tool":
        return None
    calls = []
    for number, tool in enumerate(tools[:2]):
        name = tool["function"]["name"]
        calls.append(
            {
                "id": f"call_{number}_{name}",
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": json.dumps({"query": _last_user_text(payload)}),
                },
            }
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


def _usage(payload: dict[str, Any], completion_tokens: int) -> dict[str, Any]:
    prompt = sum(len(json.dumps(m).split()) for m in payload["messages"])
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _logprobs(text: str) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": word,
                "logprob": -0.01 * (i + 1),
                "bytes": list(word.encode()),
                "top_logprobs": [],
            }
            for i, word in enumerate(text.split(" "))
        ],
        "refusal": None,
    }


Responder = Callable[[dict[str, Any]], str]


def completion(payload: dict[str, Any], responder: Responder | None = None) -> dict[str, Any]:
    """The non-streamed answer, as the OpenAI API shapes it."""
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
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text,
            "refusal": None,
            "annotations": [],
        }
        if calls:
            message["tool_calls"] = calls
        completion_tokens += len((text or json.dumps(calls)).split())
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": _logprobs(text) if payload.get("logprobs") and text else None,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        )
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": payload["model"],
        "choices": choices,
        "usage": _usage(payload, completion_tokens),
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def chunks(payload: dict[str, Any], responder: Responder | None = None) -> list[dict[str, Any]]:
    """The streamed answer, chunk by chunk, as the OpenAI API sends it."""
    include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    head = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": payload["model"],
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        head["usage"] = None
    whole = completion(payload, responder)
    out: list[dict[str, Any]] = []

    def chunk(
        index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None
    ) -> None:
        out.append(
            {
                **head,
                "choices": [
                    {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
                ],
            }
        )

    for choice in whole["choices"]:
        index = choice["index"]
        message = choice["message"]
        chunk(
            index,
            {
                "role": "assistant",
                "content": "" if message["content"] is not None else None,
                "refusal": None,
            },
        )
        if message.get("tool_calls"):
            for number, call in enumerate(message["tool_calls"]):
                arguments = call["function"]["arguments"]
                chunk(
                    index,
                    {
                        "tool_calls": [
                            {
                                "index": number,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": ""},
                            }
                        ]
                    },
                )
                for start in range(0, len(arguments), 7):
                    chunk(
                        index,
                        {
                            "tool_calls": [
                                {
                                    "index": number,
                                    "function": {"arguments": arguments[start : start + 7]},
                                }
                            ]
                        },
                    )
        else:
            words = message["content"].split(" ")
            logprobs = (choice["logprobs"] or {}).get("content") if choice["logprobs"] else None
            for number, word in enumerate(words):
                piece = word if number == 0 else " " + word
                chunk(
                    index,
                    {"content": piece},
                    logprobs={"content": [logprobs[number]], "refusal": None} if logprobs else None,
                )
        chunk(index, {}, finish=choice["finish_reason"])
    if include_usage:
        out.append({**head, "choices": [], "usage": whole["usage"]})
    return out
