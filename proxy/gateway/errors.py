"""The one place errors become responses: OpenAI-shaped, or Anthropic-shaped on the
Messages routes (``/v1/messages`` and below), whose clients parse only that shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from core.dialects import messages
from core.errors import InvalidRequestError, NotFoundError, StillroomError
from proxy.gateway.messages import is_messages_path

log = logging.getLogger("stillroom.proxy")


def _error_response(request: Request, exc: StillroomError) -> JSONResponse:
    if is_messages_path(request.url.path):
        body = messages.error_body(exc.status_code, exc.message)
    else:
        body = exc.to_body()
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _stillroom_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StillroomError)
    return _error_response(request, exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error: StillroomError = NotFoundError(
            f"unknown path {request.method} {request.url.path}", code="unknown_url"
        )
    else:
        error = InvalidRequestError(
            str(exc.detail), status_code=exc.status_code, headers=dict(exc.headers or {})
        )
    return _error_response(request, error)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"] if part != "body") or None
    return _error_response(request, InvalidRequestError(f"{param}: {first['msg']}", param=param))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return _error_response(request, StillroomError("internal error in the stillroom proxy"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StillroomError, _stillroom_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
