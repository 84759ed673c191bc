"""Where the distiller publishes student versions: a student server's LoRA adapters.

:class:`StudentBackend` is one student server holding adapters; :class:`HttpStudentBackend`
implements it over vLLM's OpenAI-compatible HTTP API, which both vLLM (``--enable-lora``
with runtime LoRA updating on) and the embedded server (``stillroom student``) speak.
:class:`StudentReplicas`, what the distiller publishes to, keeps every adapter on every
replica of that server. Every failure, the server's own errors included, is raised as
:class:`StudentBackendError` carrying the server's message; :class:`StudentServerDown`
when the server did not answer at all, or said it is unavailable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from core.errors import ConfigurationError
from core.settings import Settings

log = logging.getLogger("stillroom.distiller")

DEFAULT_EMBEDDED_URL = "http://127.0.0.1:8001"
"""Where ``stillroom student`` listens by default (``--port 8001``)."""

UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
"""What a server that is starting, or a gateway in front of one that is away, answers."""


class StudentBackendError(Exception):
    """The student server failed or refused; ``status_code`` is its HTTP status, if it
    answered, and ``error_type`` the ``type`` of its error body."""

    def __init__(
        self, message: str, *, status_code: int | None = None, error_type: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_type = error_type


class StudentServerDown(StudentBackendError):
    """The student server did not answer, or answered that it is unavailable (502, 503,
    504): it may be starting. Nothing is known of the adapter."""


class StudentBackend(Protocol):
    """A student server holding LoRA adapters by name, at ``base_url``."""

    base_url: str

    async def load_adapter(self, name: str, path: str, *, replace: bool = False) -> None:
        """Load the adapter at ``path`` (a path on the student server's machine) as
        ``name``; ``replace`` swaps an adapter already loaded under that name."""

    async def unload_adapter(self, name: str) -> None:
        """Unload the adapter ``name``."""

    async def list_adapters(self) -> list[str]:
        """Names of the adapters loaded."""

    async def complete(
        self,
        name: str,
        messages: Sequence[dict[str, Any]],
        *,
        max_tokens: int,
        logprobs: bool,
    ) -> dict[str, Any]:
        """The greedy answer of adapter ``name`` to ``messages``: a ``chat.completion``."""

    async def health_check(self, name: str, messages: Sequence[dict[str, Any]]) -> None:
        """Raise :class:`StudentBackendError` unless adapter ``name`` answers ``messages``
        with a non-empty answer."""


class HttpStudentBackend:
    """:class:`StudentBackend` over HTTP, for vLLM and the embedded student server.

    ``base_url`` is the server's root (``http://host:8001``; a trailing ``/v1`` is also
    accepted). The ``client`` is the caller's, which owns and closes it.
    """

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient,
        *,
        api_key: str | None = None,
        health_check_max_tokens: int = 16,
    ) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self._client = client
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._health_check_max_tokens = health_check_max_tokens

    async def _request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        url = self.base_url + path
        try:
            response = await self._client.request(method, url, json=body, headers=self._headers)
        except httpx.HTTPError as exc:
            raise StudentServerDown(
                f"student server at {self.base_url} could not be reached: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if response.is_error:
            message, error_type = _error_of(response)
            failure = (
                StudentServerDown
                if response.status_code in UNAVAILABLE_STATUSES
                else StudentBackendError
            )
            raise failure(
                f"student server answered {method} {path} with {response.status_code}: {message}",
                status_code=response.status_code,
                error_type=error_type,
            )
        return response

    async def load_adapter(self, name: str, path: str, *, replace: bool = False) -> None:
        """``POST /v1/load_lora_adapter``; ``replace`` is vLLM's ``load_inplace``."""
        body: dict[str, Any] = {"lora_name": name, "lora_path": path}
        if replace:
            body["load_inplace"] = True
        await self._request("POST", "/v1/load_lora_adapter", body)

    async def unload_adapter(self, name: str) -> None:
        """``POST /v1/unload_lora_adapter``."""
        await self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    async def list_adapters(self) -> list[str]:
        """The models of ``GET /v1/models`` that have a parent: the LoRA adapters."""
        response = await self._request("GET", "/v1/models")
        cards = _json(response).get("data") or []
        return [str(card["id"]) for card in cards if isinstance(card, dict) and card.get("parent")]

    async def complete(
        self,
        name: str,
        messages: Sequence[dict[str, Any]],
        *,
        max_tokens: int,
        logprobs: bool,
    ) -> dict[str, Any]:
        """``POST /v1/chat/completions`` with ``model`` = ``name``, at temperature 0."""
        body = {
            "model": name,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "logprobs": logprobs,
            "stream": False,
        }
        completion = _json(await self._request("POST", "/v1/chat/completions", body))
        if not completion.get("choices"):
            raise StudentBackendError(f"student server answered without choices: {completion}")
        return completion

    async def health_check(self, name: str, messages: Sequence[dict[str, Any]]) -> None:
        """A short greedy answer of adapter ``name`` must be non-empty."""
        completion = await self.complete(
            name, messages, max_tokens=self._health_check_max_tokens, logprobs=False
        )
        content = (completion["choices"][0].get("message") or {}).get("content")
        if not isinstance(content, str) or not content.strip():
            raise StudentBackendError(
                f"adapter {name!r} failed its health check: it answered {content!r}"
            )


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an adapter is once loaded: the replicas holding it, and those that were down
    (by URL, with why), which the adapter sync loads once they are back."""

    holding: tuple[str, ...]
    down: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one adapter sync did: ``(replica, adapter)`` pairs loaded, and what failed
    (``(replica, why)``; those are tried again by the next sync)."""

    loaded: tuple[tuple[str, str], ...]
    failed: tuple[tuple[str, str], ...]


class StudentReplicas:
    """Every replica of the student server, which the distiller publishes to.

    Each replica must hold every published adapter: the proxies send a version's requests
    only to replicas that list its adapter. A replica that is down
    (:class:`StudentServerDown`) when a version is published is passed over as long as one
    replica loaded the adapter and answered the health check; :meth:`sync` loads it there
    once it is back. A replica that answers and refuses the adapter, or whose answer fails
    the health check, fails the publish: every replica serves the same base model, so the
    adapter is at fault, not the replica.
    """

    def __init__(self, replicas: Sequence[StudentBackend]) -> None:
        if not replicas:
            raise ValueError("name at least one student server replica")
        self.replicas = list(replicas)

    @property
    def urls(self) -> list[str]:
        return [replica.base_url for replica in self.replicas]

    async def publish(
        self, name: str, path: str, probe_messages: Sequence[dict[str, Any]]
    ) -> Placement:
        """Load adapter ``name`` (from ``path``) into every replica that lacks it and
        health-check it with ``probe_messages`` on each. Raises
        :class:`StudentBackendError` when a replica refused it or none holds it."""
        return await self._place(name, path, probe_messages)

    async def ensure_loaded(self, name: str, path: str) -> Placement:
        """Load adapter ``name`` into every replica that lacks it, as :meth:`publish` does
        without the health check (for a version that passed its own)."""
        return await self._place(name, path, None)

    async def _place(
        self, name: str, path: str, probe: Sequence[dict[str, Any]] | None
    ) -> Placement:
        results = await asyncio.gather(
            *(_place_on(replica, name, path, probe) for replica in self.replicas),
            return_exceptions=True,
        )
        holding: list[str] = []
        down: dict[str, str] = {}
        for replica, result in zip(self.replicas, results, strict=True):
            if isinstance(result, StudentServerDown):
                down[replica.base_url] = result.message
            elif isinstance(result, StudentBackendError):
                raise _at(replica, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                holding.append(replica.base_url)
        if not holding:
            raise StudentServerDown(
                f"no student server replica holds {name!r}: " + "; ".join(down.values())
            )
        for url, why in down.items():
            log.warning("%s is not on %s yet (the adapter sync loads it): %s", name, url, why)
        return Placement(holding=tuple(holding), down=down)

    async def sync(self, adapters: Mapping[str, str]) -> SyncReport:
        """Load into each replica those of ``adapters`` (name: path) it lacks: one that
        restarted lacks them all. A replica that is down or refuses one is reported, and
        the others are loaded all the same."""
        reports = await asyncio.gather(*(_sync_one(replica, adapters) for replica in self.replicas))
        return SyncReport(
            loaded=tuple(pair for report in reports for pair in report.loaded),
            failed=tuple(pair for report in reports for pair in report.failed),
        )


async def _place_on(
    replica: StudentBackend, name: str, path: str, probe: Sequence[dict[str, Any]] | None
) -> None:
    if name not in await replica.list_adapters():
        await replica.load_adapter(name, path)
    if probe is not None:
        await replica.health_check(name, probe)


async def _sync_one(replica: StudentBackend, adapters: Mapping[str, str]) -> SyncReport:
    url = replica.base_url
    loaded: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    try:
        present = set(await replica.list_adapters())
        for name, path in adapters.items():
            if name in present:
                continue
            try:
                await replica.load_adapter(name, path)
            except StudentServerDown:
                raise
            except StudentBackendError as exc:  # this adapter only: load the others
                failed.append((url, f"{name}: {exc.message}"))
            else:
                loaded.append((url, name))
    except StudentServerDown as exc:
        failed.append((url, exc.message))
    return SyncReport(loaded=tuple(loaded), failed=tuple(failed))


def _at(replica: StudentBackend, error: StudentBackendError) -> StudentBackendError:
    """``error`` naming the replica it came from."""
    return StudentBackendError(
        f"{replica.base_url}: {error.message}",
        status_code=error.status_code,
        error_type=error.error_type,
    )


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        document = response.json()
    except ValueError as exc:
        raise StudentBackendError(
            f"student server sent a body that is not JSON: {response.text[:200]!r}"
        ) from exc
    if not isinstance(document, dict):
        raise StudentBackendError(f"student server sent unexpected JSON: {document!r:.200}")
    return document


def _error_of(response: httpx.Response) -> tuple[str, str | None]:
    """The message and type of an error answer: vLLM's ``{"error": {...}}``, its older
    flat ``{"message", "type"}``, or the raw text."""
    try:
        document = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase, None
    if isinstance(document, dict):
        error = document.get("error", document)
        if isinstance(error, dict) and "message" in error:
            error_type = error.get("type")
            return str(error["message"]), str(error_type) if error_type is not None else None
        if isinstance(document.get("detail"), str):
            return document["detail"], None
    return str(document)[:500], None


def create_student_backend(settings: Settings, client: httpx.AsyncClient) -> StudentReplicas:
    """The replicas ``settings`` name: vLLM (``STILLROOM_STUDENT_BACKEND=vllm``, which needs
    ``STILLROOM_STUDENT_URLS`` or ``STILLROOM_STUDENT_URL``) or the embedded server (at
    those URLs, by default ``http://127.0.0.1:8001``)."""
    urls = settings.student_replica_urls
    if not urls:
        if settings.student_backend == "vllm":
            raise ConfigurationError(
                "STILLROOM_STUDENT_BACKEND=vllm needs STILLROOM_STUDENT_URLS (or "
                "STILLROOM_STUDENT_URL), the vLLM servers' base URLs"
            )
        urls = [DEFAULT_EMBEDDED_URL]
    return StudentReplicas([HttpStudentBackend(url, client) for url in urls])
