"""The error body of every OpenAI-compatible API: ``{"error": {message, type, param,
code}}`` (OpenAI's ``ErrorResponse``; the ``openai`` SDK's ``ErrorObject`` inside)."""

from __future__ import annotations

from core.wire.base import WireModel


class ErrorDetail(WireModel):
    message: str
    type: str
    param: str | None = None
    # A string or null from OpenAI; vLLM (and the embedded student server, which speaks
    # vLLM's API) repeats the HTTP status there as an integer.
    code: str | int | None = None


class ErrorBody(WireModel):
    error: ErrorDetail

    @classmethod
    def of(
        cls,
        message: str,
        *,
        error_type: str,
        param: str | None = None,
        code: str | int | None = None,
    ) -> ErrorBody:
        return cls(error=ErrorDetail(message=message, type=error_type, param=param, code=code))
