"""The handler of a request races its client's disconnect; whichever ends first decides."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response

from core.errors import InvalidRequestError
from core.metrics import Metrics
from proxy.gateway.cancellation import cancelled_on_disconnect


class Client:
    """The ASGI side of a client whose body was read, and who may go away."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.receiving = 0

    def request(self) -> Request:
        return Request({"type": "http", "method": "POST", "headers": []}, receive=self.receive)

    async def receive(self) -> dict[str, Any]:
        self.receiving += 1
        try:
            await self.gone.wait()
        finally:
            self.receiving -= 1
        return {"type": "http.disconnect"}


def disconnects(metrics: Metrics) -> float:
    return float(metrics.registry.get_sample_value("stillroom_client_disconnects_total") or 0)


async def test_the_handlers_response_comes_back_and_the_watch_ends() -> None:
    client, metrics = Client(), Metrics(CollectorRegistry())

    async def handler() -> Response:
        return Response(b"answer")

    response = await cancelled_on_disconnect(client.request(), handler, metrics=metrics)
    assert response.body == b"answer"
    await asyncio.sleep(0)
    assert client.receiving == 0, "nothing keeps reading the client"
    assert disconnects(metrics) == 0


async def test_a_client_that_leaves_cancels_the_handler_and_gets_499() -> None:
    client, metrics = Client(), Metrics(CollectorRegistry())
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handler() -> Response:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response(b"too late")

    answering = asyncio.create_task(
        cancelled_on_disconnect(client.request(), handler, metrics=metrics)
    )
    await started.wait()
    client.gone.set()
    response = await asyncio.wait_for(answering, timeout=5)
    assert response.status_code == 499
    assert cancelled.is_set()
    assert disconnects(metrics) == 1


async def test_an_error_of_the_handler_is_raised_as_it_is() -> None:
    client, metrics = Client(), Metrics(CollectorRegistry())

    async def handler() -> Response:
        raise InvalidRequestError("bad")

    with pytest.raises(InvalidRequestError, match="bad"):
        await cancelled_on_disconnect(client.request(), handler, metrics=metrics)
    assert disconnects(metrics) == 0
