"""Every ``/v1/*`` path stillroom does not answer itself: passed to the teacher byte for
byte (the OpenAI teacher, or for ``/v1/messages/*``, such as ``count_tokens``, Anthropic)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from proxy.gateway.headers import client_response_headers, teacher_request_headers
from proxy.gateway.runtime import Runtime

log = logging.getLogger("stillroom.proxy")


async def pass_through(request: Request, runtime: Runtime, *, anthropic: bool = False) -> Response:
    """Send the request on as it came (method, path, query, body, end-to-end headers) and
    stream the teacher's answer back undecoded, its encoding and length intact. With
    ``anthropic``, to the Anthropic teacher (with the server's Anthropic key, if held)."""
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    headers = teacher_request_headers(
        request.headers.raw,
        teacher_key=runtime.anthropic_key if anthropic else runtime.teacher_key,
        accept_encoding=request.headers.get("accept-encoding", "identity").encode(),
        anthropic=anthropic,
    )
    teacher = runtime.anthropic if anthropic else runtime.teacher
    response = await teacher.send(
        request.method,
        request.url.path,
        headers=headers,
        content=request.stream() if has_body else None,
        query=request.scope.get("query_string", b""),
    )
    streamed = StreamingResponse(_raw(response), status_code=response.status_code)
    streamed.raw_headers = client_response_headers(list(response.headers.raw), decoded=False)
    return streamed


async def _raw(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        # Headers are gone already: the client sees the body end short, as it would
        # have from the teacher itself.
        log.warning("teacher response to %s cut short: %r", response.request.url.path, exc)
    finally:
        with anyio.CancelScope(shield=True):
            await response.aclose()
