"""The router's client of the student server (vLLM or the embedded one): one answer with
log-probabilities, or a clear failure the proxy falls back from."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import httpx

MAX_STUDENT_TOKENS = 512


class StudentUnavailable(Exception):
    """The student did not produce a usable answer (error, timeout, bad response)."""


@dataclass(frozen=True, slots=True)
class StudentReply:
    completion: dict[str, Any]
    text: str
    confidence: float  # mean token log-probability of the answer
    seconds: float


def mean_logprob(completion: dict[str, Any]) -> float:
    choice = completion["choices"][0]
    tokens = ((choice.get("logprobs") or {}).get("content")) or []
    values = [t["logprob"] for t in tokens if isinstance(t.get("logprob"), int | float)]
    return sum(values) / len(values) if values else -math.inf


class StudentClient:
    """Asks a student version (by its adapter name) to answer a chat request."""

    def __init__(self, *, base_url: str, client: httpx.AsyncClient, timeout: float) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.client = client
        self.timeout = timeout

    async def answer(self, adapter: str, payload: dict[str, Any]) -> StudentReply:
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
        body = {
            "model": adapter,
            "messages": payload["messages"],
            "max_tokens": min(int(limit), MAX_STUDENT_TOKENS) if limit else MAX_STUDENT_TOKENS,
            "temperature": 0.0,
            "logprobs": True,
            "stream": False,
        }
        started = time.perf_counter()
        try:
            response = await self.client.post(
                self.base_url + "/v1/chat/completions", json=body, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            raise StudentUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise StudentUnavailable(f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            completion = response.json()
            message = completion["choices"][0]["message"]
            text = message.get("content")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise StudentUnavailable(f"malformed student answer: {exc}") from exc
        if not isinstance(text, str):
            raise StudentUnavailable("the student answered without text")
        return StudentReply(
            completion=completion,
            text=text,
            confidence=mean_logprob(completion),
            seconds=time.perf_counter() - started,
        )
