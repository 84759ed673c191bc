"""Reading and parsing request bodies, with OpenAI-shaped errors for bad input."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request

from core.errors import InvalidRequestError, PayloadTooLargeError
from core.wire import ChatCompletionRequest


async def read_body(request: Request, *, limit: int) -> bytes:
    """The whole request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the {limit} limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequestError("the request body is empty; send a JSON object")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidRequestError(
            f"the request body must be a JSON object, not {type(payload).__name__}"
        )
    return payload


def parse_chat_request(payload: dict[str, Any]) -> ChatCompletionRequest:
    """Check the fields routing and capture rely on; everything else passes untouched."""
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequestError(
            f"invalid value for '{param}': {first['msg']}" if param else first["msg"],
            param=param,
        ) from exc
