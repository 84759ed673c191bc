"""Errors stillroom raises, each one mapped to an OpenAI-shaped error body.

The hierarchy::

    StillroomError                  500 api_error
    ├── InvalidRequestError         400 invalid_request_error
    │   ├── PayloadTooLargeError    413 invalid_request_error
    │   └── NotFoundError           404 invalid_request_error
    ├── AuthenticationError         401 invalid_request_error (code invalid_api_key)
    ├── PermissionDeniedError       403 invalid_request_error
    ├── TeacherError                502 api_error (the teacher could not be used)
    │   ├── TeacherUnreachableError 502 api_error (connect failed)
    │   └── TeacherTimeoutError     504 api_error (no answer in time)
    ├── ConfigurationError          raised at start-up, never sent to a client
    └── StoreSchemaError            raised at start-up: the store's schema is not one
                                    this build can use (a newer stillroom upgraded it)

Raise these anywhere; exactly one handler in the proxy turns them into responses.
"""

from __future__ import annotations

from typing import Any

from core.wire import ErrorBody


class StillroomError(Exception):
    """Base of every error stillroom raises on purpose."""

    status_code: int = 500
    error_type: str = "api_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        """The error in OpenAI's wire shape: ``{"error": {message, type, param, code}}``."""
        body = ErrorBody.of(
            self.message, error_type=self.error_type, param=self.param, code=self.code
        )
        return body.model_dump()


class InvalidRequestError(StillroomError):
    status_code = 400
    error_type = "invalid_request_error"


class PayloadTooLargeError(InvalidRequestError):
    status_code = 413
    default_code = "request_too_large"


class NotFoundError(InvalidRequestError):
    status_code = 404
    default_code = "not_found"


class AuthenticationError(StillroomError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(StillroomError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "permission_denied"


class TeacherError(StillroomError):
    status_code = 502
    error_type = "api_error"
    default_code = "teacher_error"


class TeacherUnreachableError(TeacherError):
    default_code = "teacher_unreachable"


class TeacherTimeoutError(TeacherError):
    status_code = 504
    default_code = "teacher_timeout"


class ConfigurationError(StillroomError):
    """A setting or configuration file that stillroom cannot start with."""


class StoreSchemaError(StillroomError):
    """The store's schema is not one this build can bring to its own: upgraded by a newer
    stillroom, or made by a build that recorded no schema revision. Stops start-up."""
