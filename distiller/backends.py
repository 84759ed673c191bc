"""Where the distiller publishes student versions: a student server's LoRA adapters.

:class:`StudentBackend` is the one interface the distiller uses; :class:`HttpStudentBackend`
implements it over vLLM's OpenAI-compatible HTTP API, which both vLLM (``--enable-lora``
with runtime LoRA updating on) and the embedded server (``stillroom student``) speak.
Every failure, the server's own errors included, is raised as :class:`StudentBackendError`
carrying the server's message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import httpx

from core.errors import ConfigurationError
from core.settings import Settings

DEFAULT_EMBEDDED_URL = "http://127.0.0.1:8001"
"""Where ``stillroom student`` listens by default (``--port 8001``)."""


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


class StudentBackend(Protocol):
    """A student server holding LoRA adapters by name."""

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
            raise StudentBackendError(
                f"student server at {self.base_url} could not be reached: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if response.is_error:
            message, error_type = _error_of(response)
            raise StudentBackendError(
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


def create_student_backend(settings: Settings, client: httpx.AsyncClient) -> StudentBackend:
    """The backend ``settings`` name: vLLM (``STILLROOM_STUDENT_BACKEND=vllm``, which needs
    ``STILLROOM_STUDENT_URL``) or the embedded server (at ``STILLROOM_STUDENT_URL``, by
    default ``http://127.0.0.1:8001``)."""
    url = settings.student_url
    if url is None:
        if settings.student_backend == "vllm":
            raise ConfigurationError(
                "STILLROOM_STUDENT_BACKEND=vllm needs STILLROOM_STUDENT_URL, the vLLM "
                "server's base URL"
            )
        url = DEFAULT_EMBEDDED_URL
    return HttpStudentBackend(url, client)
