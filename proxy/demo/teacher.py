"""The demo's simulated teacher: an OpenAI-compatible server that labels banking support
messages with their CLINC150 intent, as a frontier model prompted for it would.

It answers ``POST /v1/chat/completions`` (plain and streamed, ``stream_options`` honoured)
and ``GET /v1/models`` in OpenAI's wire format, after a latency drawn from a log-normal
distribution like a hosted model's, and reports token usage so the proxy can price each
answer. Known utterances get their gold intent; any other message gets the intent whose
utterances share the most words with it, or ``other``.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from core.wire import (
    SSE_DONE,
    ChatCompletion,
    CompletionTokensDetails,
    ErrorBody,
    PromptTokensDetails,
    Usage,
    completion_chunks,
    sse,
)

MODEL = "gpt-4o"
SNAPSHOT = "gpt-4o-2024-08-06"
OTHER = "other"
_WORD = re.compile(r"[a-z0-9']+")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def system_prompt(intents: Iterable[str]) -> str:
    """The prompt the demo's app sends: the teacher's instructions for the task."""
    return (
        "You route messages sent to a bank's support desk. Reply with exactly one intent "
        "name from this list and nothing else: "
        + ", ".join(intents)
        + f". If none fits, reply {OTHER}."
    )


def count_tokens(text: str) -> int:
    """Tokens of ``text`` as a BPE tokenizer would roughly count them: one per word or
    punctuation mark, and one more for every four characters past the first four of a word."""
    return sum(1 + max(0, len(piece) - 4) // 4 for piece in _TOKEN.findall(text))


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    # OpenAI counts a few tokens of framing per message and for the reply's priming.
    return 3 + sum(4 + count_tokens(str(m.get("content") or "")) for m in messages)


@dataclass(frozen=True)
class Latency:
    """Seconds before a hosted model answers: log-normal around ``median``."""

    median: float
    sigma: float = 0.35

    def draw(self, rng: random.Random) -> float:
        return self.median * math.exp(rng.gauss(0.0, self.sigma))


class IntentTeacher:
    """Labels a message: its gold intent if known, else the intent whose words it shares
    most (each word weighted by how often the intent's messages use it and how few
    intents do), or ``other`` when nothing distinctive is shared."""

    def __init__(self, labelled: Iterable[tuple[str, str]], *, floor: float = 0.5) -> None:
        self.gold: dict[str, str] = {}
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        sizes: Counter[str] = Counter()
        for text, intent in labelled:
            self.gold[_normal(text)] = intent
            counts[intent].update(set(_WORD.findall(text.lower())))
            sizes[intent] += 1
        spread = Counter(word for words in counts.values() for word in words)
        self.weights = {
            intent: {
                word: n / sizes[intent] * math.log(len(counts) / spread[word])
                for word, n in words.items()
            }
            for intent, words in counts.items()
        }
        self.floor = floor

    def label(self, message: str) -> str:
        known = self.gold.get(_normal(message))
        if known is not None:
            return known
        words = set(_WORD.findall(message.lower()))
        best, best_score = OTHER, self.floor
        for intent, weights in self.weights.items():
            score = sum(weights.get(word, 0.0) for word in words)
            if score > best_score:
                best, best_score = intent, score
        return best


def _normal(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    body = ErrorBody.of(message, error_type="invalid_request_error", param=param)
    return JSONResponse(body.model_dump(), status_code=status)


def create_teacher_app(teacher: IntentTeacher, latency: Latency, *, seed: int = 0) -> Starlette:
    rng = random.Random(seed)

    async def models(request: Request) -> Response:
        entry = {"id": MODEL, "object": "model", "created": 1_715_367_049, "owned_by": "system"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def chat(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request.")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return _error(400, "'messages' must be a non-empty array.", "messages")
        user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if not user:
            return _error(400, "The conversation needs a user message.", "messages")
        answer = teacher.label(str(user[-1].get("content") or ""))
        usage = _usage(prompt_tokens(messages), count_tokens(answer) + 1)
        await asyncio.sleep(latency.draw(rng))
        completion = _completion(f"chatcmpl-{uuid.uuid4().hex[:29]}", answer, usage)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            events = _stream(completion, include_usage=bool(options.get("include_usage")))
            return StreamingResponse(events, media_type="text/event-stream")
        return Response(completion.model_dump_json(), media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


def _usage(prompt: int, completion: int) -> Usage:
    usage = Usage.of(prompt, completion)
    usage.prompt_tokens_details = PromptTokensDetails(cached_tokens=0, audio_tokens=0)
    usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=0, audio_tokens=0)
    return usage


def _completion(completion_id: str, answer: str, usage: Usage) -> ChatCompletion:
    completion = ChatCompletion.from_text(answer, model=SNAPSHOT, id=completion_id, usage=usage)
    completion.service_tier = "default"
    completion.system_fingerprint = "fp_demo"
    return completion


async def _stream(completion: ChatCompletion, *, include_usage: bool) -> AsyncIterator[bytes]:
    # The whole answer is ready once the latency has passed, so every chunk goes at once.
    for chunk in completion_chunks(completion, include_usage=include_usage):
        yield sse(chunk)
    yield SSE_DONE
