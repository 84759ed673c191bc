"""How the router asks a student: one interface for every kind of student version.

:class:`Student` is what routing, shadow and audit scoring call; :class:`Students` sends
each version to the student of its kind: :class:`StudentClient` asks the student server
(vLLM or the embedded one; one replica of it that holds the version's adapter) for a LoRA
version, ``router.classifier`` answers a classifier version and ``router.extractor`` an
extractor version inside the proxy. Either way
the answer comes back with a confidence (a log-probability), or as a clear failure the
proxy falls back from.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from router.policy import Policy, StudentRef
from router.reasons import Declined
from router.replicas import ReplicaAdapters

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

MAX_STUDENT_TOKENS = 512


class StudentUnavailable(Exception):
    """The student did not produce a usable answer (error, timeout, bad response)."""


class StudentDeclined(StudentUnavailable):
    """The student would not answer this request (e.g. an input unlike its training set),
    or could not (no replica holds its adapter); ``reason`` names why, for the routing
    metrics."""

    def __init__(self, reason: Declined, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StudentReply:
    completion: dict[str, Any]
    text: str
    confidence: float  # log-probability: mean per answer token (lora), of the label (classifier)
    seconds: float


@dataclass(frozen=True, slots=True)
class PromptEmbedding:
    """A request's prompt key embedded once, for the difficulty gate and a classifier."""

    vector: NDArray[np.float32]
    seconds: float


class Student(Protocol):
    async def answer(
        self, student: StudentRef, payload: dict[str, Any], *, prompt: PromptEmbedding | None = None
    ) -> StudentReply:
        """The answer of version ``student`` to the chat request ``payload`` (``prompt``:
        its embedding, when the caller has it). Raises :class:`StudentUnavailable`."""


class Students:
    """A :class:`Student` that hands each version to the student of its kind."""

    def __init__(self, kinds: Mapping[str, Student]) -> None:
        self.kinds = dict(kinds)

    async def answer(
        self, student: StudentRef, payload: dict[str, Any], *, prompt: PromptEmbedding | None = None
    ) -> StudentReply:
        kind = self.kinds.get(student.kind)
        if kind is None:
            raise StudentUnavailable(f"this proxy serves no {student.kind!r} students")
        return await kind.answer(student, payload, prompt=prompt)


class Preparing(Protocol):
    async def prepare(self, policies: dict[str, Policy]) -> None:
        """Load what the policies' students need before the policies take effect."""


async def prepare_students(policies: dict[str, Policy], *kinds: Preparing) -> None:
    """Each in-proxy kind loads its published versions (the policy refresh awaits it)."""
    for kind in kinds:
        await kind.prepare(policies)


def structured_output(payload: dict[str, Any]) -> dict[str, Any] | None:
    """The request's JSON ``response_format`` (``json_object``, or ``json_schema`` with its
    schema), passed on as it came: vLLM's OpenAI server turns it into its structured
    outputs (``structured_outputs.json``; ``guided_json`` before v0.12), the embedded
    student server holds its decoding to it, so a LoRA student's answer always parses."""
    response_format = payload.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    ):
        return response_format
    return None


def mean_logprob(completion: dict[str, Any]) -> float:
    choice = completion["choices"][0]
    tokens = ((choice.get("logprobs") or {}).get("content")) or []
    values = [t["logprob"] for t in tokens if isinstance(t.get("logprob"), int | float)]
    return sum(values) / len(values) if values else -math.inf


class StudentClient:
    """Asks the student server to answer a chat request as a LoRA version (by its adapter
    name): one of its replicas that holds the adapter, in turn. When none does, the
    request is declined (``not_loaded``) without a call."""

    def __init__(
        self,
        *,
        base_urls: Sequence[str],
        client: httpx.AsyncClient,
        timeout: float,
        refresh_seconds: float,
    ) -> None:
        self.replicas = ReplicaAdapters(base_urls, client, refresh_seconds=refresh_seconds)
        self.client = client
        self.timeout = timeout

    async def start(self) -> None:
        """Learn which replica holds which adapter, and keep learning it."""
        await self.replicas.start()

    async def close(self) -> None:
        await self.replicas.close()

    async def answer(
        self, student: StudentRef, payload: dict[str, Any], *, prompt: PromptEmbedding | None = None
    ) -> StudentReply:
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
        body = {
            "model": student.adapter_name,
            "messages": payload["messages"],
            "max_tokens": min(int(limit), MAX_STUDENT_TOKENS) if limit else MAX_STUDENT_TOKENS,
            "temperature": 0.0,
            "logprobs": True,
            "stream": False,
        }
        response_format = structured_output(payload)
        if response_format is not None:
            body["response_format"] = response_format
        started = time.perf_counter()
        url = await self.replicas.pick(student.adapter_name)
        if url is None:
            raise StudentDeclined(
                "not_loaded", f"no student server replica holds {student.adapter_name}"
            )
        try:
            response = await self.client.post(
                url + "/v1/chat/completions", json=body, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            self.replicas.failed(url, student.adapter_name)
            raise StudentUnavailable(f"{url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            self.replicas.failed(url, student.adapter_name)
            raise StudentUnavailable(f"{url}: HTTP {response.status_code}: {response.text[:200]}")
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
