"""The one error of the dialect conversions: a body that is not a valid request of its API.

It is an :class:`core.errors.InvalidRequestError` (400, ``invalid_request_error``) naming
the offending field in ``param`` (``input[2].call_id``), so the proxy's one error handler
answers it like any other bad request: in OpenAI's shape on ``/v1/responses``, in
Anthropic's (``core.dialects.messages.error_body``) on ``/v1/messages``. A teacher's stream
that breaks the dialect's rules raises it too; there it means "not a complete answer".
"""

from __future__ import annotations

from core.errors import InvalidRequestError


class DialectError(InvalidRequestError):
    """A request (or a teacher's stream event) that breaks its dialect's rules."""
