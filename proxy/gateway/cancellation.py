"""A client that goes away cancels whatever is answering it.

One wrapper around a whole handler, in the manner of vLLM's ``with_cancellation``
(``vllm/entrypoints/utils.py``): the handler races the client's ``http.disconnect``. When
the client leaves first, the handler is cancelled, and with it every await inside it (the
student call, the teacher call, the wait on a worker thread); what was answering records
its exchange as aborted on the way out (``ExchangeRecorder.aborted_if_cancelled``). Once
the handler has returned a streamed response, the stream's relay sees the disconnect
itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from core.errors import StillroomError
from core.metrics import Metrics
from proxy.gateway.recording import CLIENT_CLOSED


async def cancelled_on_disconnect(
    request: Request, handler: Callable[[], Awaitable[Response]], *, metrics: Metrics
) -> Response:
    """``handler``'s response, or, if the client disconnects first, ``handler`` cancelled,
    the disconnect counted and a 499 nobody reads.

    Call it once the request body is read: the watch takes the request's next messages,
    which would otherwise be body chunks.
    """
    answering = asyncio.ensure_future(handler())
    watching = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({answering, watching}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        answering.cancel()  # nothing outlives its request
        raise
    finally:
        watching.cancel()
    if answering.done():
        return answering.result()
    answering.cancel()
    with contextlib.suppress(asyncio.CancelledError, StillroomError):
        await answering
    metrics.client_disconnects.inc()
    return Response(status_code=CLIENT_CLOSED)


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
