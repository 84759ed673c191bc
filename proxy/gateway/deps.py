"""Dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import Headers

from core.errors import AuthenticationError
from core.tenants import key_hash
from proxy.gateway.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def presented_key(headers: Headers, *, anthropic: bool = False) -> str:
    """The API key a request presents ("" for none): a bearer token, else the ``api-key``
    header (``x-api-key`` on Anthropic's routes)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return token.strip()
    return headers.get("x-api-key" if anthropic else "api-key", "").strip()


def presented_key_hash(headers: Headers, *, anthropic: bool = False) -> str | None:
    """The SHA-256 of the key a request presents (``core.tenants.key_hash``), or None."""
    key = presented_key(headers, anthropic=anthropic)
    return key_hash(key) if key else None


def require_client_key(request: Request, runtime: RuntimeDep, *, anthropic: bool = False) -> None:
    """When the server holds the teacher key, clients must present one of
    ``STILLROOM_API_KEYS`` (as a bearer token, or an ``api-key`` header). With
    ``anthropic`` (the Messages routes), the key that counts is
    ``STILLROOM_ANTHROPIC_API_KEY``, and Anthropic's SDKs send theirs as ``x-api-key``."""
    settings = runtime.settings
    held = settings.anthropic_api_key if anthropic else settings.teacher_api_key
    if held is None or not settings.api_keys:
        return
    presented = presented_key(request.headers, anthropic=anthropic)
    if not presented:
        header = "x-api-key: <key>" if anthropic else "Authorization: Bearer <key>"
        raise AuthenticationError(f"missing API key: send '{header}' with a key this proxy issued")
    candidate = presented.strip().encode()
    if not any(
        hmac.compare_digest(candidate, key.get_secret_value().encode()) for key in settings.api_keys
    ):
        raise AuthenticationError("incorrect API key provided")
