"""Dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from core.errors import AuthenticationError
from proxy.gateway.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require_client_key(request: Request, runtime: RuntimeDep) -> None:
    """When the server holds the teacher key, clients must present one of
    ``STILLROOM_API_KEYS`` (as a bearer token, or an ``api-key`` header)."""
    settings = runtime.settings
    if settings.teacher_api_key is None or not settings.api_keys:
        return
    authorization = request.headers.get("authorization", "")
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer":
        presented = request.headers.get("api-key", "")
    if not presented:
        raise AuthenticationError(
            "missing API key: send 'Authorization: Bearer <key>' with a key this proxy issued"
        )
    candidate = presented.strip().encode()
    if not any(
        hmac.compare_digest(candidate, key.get_secret_value().encode()) for key in settings.api_keys
    ):
        raise AuthenticationError("incorrect API key provided")
