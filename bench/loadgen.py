"""The load generator of the overhead benchmark: a lean keep-alive HTTP/1.1 client that
sends a prebuilt chat completion request (with the headers the openai SDK sends), the
phases that drive it (alternating sequential calls, open loop, closed loop) and the
nearest-rank percentiles they are reported in.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import httptools
import orjson
from fake_teacher import CHAT

CONCURRENCY = 32
SETTLE_SECONDS = 0.5  # after a phase, so the capture writer's flush is counted in it
REQUEST_TIMEOUT = 10.0

SYSTEM_PROMPT = (
    "You are the triage assistant of Acme Bank's customer support. Read the customer's "
    "message and answer with exactly one intent label from this list, then a colon and a "
    "one-sentence summary: account.close, account.open, billing.dispute, billing.refund, "
    "card.activate, card.block, card.replace, loan.apply, loan.status, transfer.failed, "
    "transfer.limit, security.fraud, security.password, app.bug, other. Never invent a "
    "label. If several apply, pick the one the customer most needs resolved first. Do not "
    "greet, do not apologise, do not add advice."
)
REQUEST_BODY = orjson.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": "Hi, I was charged twice for my March subscription (49.90 each "
                "time) and I'd like the second charge refunded to my card ending 4417.",
            },
        ],
        "temperature": 0,
        "max_tokens": 64,
        "user": "customer-5521",
    }
)
STREAM_BODY = orjson.dumps({**orjson.loads(REQUEST_BODY), "stream": True})
# What the openai SDK (Python, async) sends.
CLIENT_HEADERS = (
    "accept: application/json",
    "accept-encoding: gzip, deflate",
    "authorization: Bearer sk-bench-not-a-real-key",
    "content-type: application/json",
    "user-agent: AsyncOpenAI/Python 1.99.9",
    "x-stainless-arch: x64",
    "x-stainless-async: async:asyncio",
    "x-stainless-lang: python",
    "x-stainless-os: Linux",
    "x-stainless-package-version: 1.99.9",
    "x-stainless-read-timeout: 600",
    "x-stainless-retry-count: 0",
    "x-stainless-runtime: CPython",
    "x-stainless-runtime-version: 3.11.7",
)


class Endpoint(Protocol):
    """A server under load: where it listens, and its process, whose CPU time is read."""

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int: ...


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# --- the client -------------------------------------------------------------------------


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, its answers parsed with httptools (as uvicorn
    parses requests). One request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.open = True
        self.reusable = False
        self.status = 0
        self.first_body: float | None = None
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, _body: bytes) -> None:
        if self.first_body is None:
            self.first_body = time.perf_counter()

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self.open = False
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, request: bytes) -> tuple[int, float | None]:
        """Send one request; its status and when the first body bytes arrived."""
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.status, self.first_body, self.reusable = 0, None, False
        self.transport.write(request)
        await self.done
        return self.status, self.first_body


class LoadClient:
    """The load generator's client for one server: a pool of keep-alive connections.

    Not httpx: its pool costs more CPU with every connection it holds (measured here: 0.6
    ms a request with none idle, 1.25 ms with 300), so under a queue the generator, not
    the server, became the bottleneck. This one takes an idle connection in O(1) and sends
    prebuilt bytes, so the generator leaves the CPU to the servers."""

    def __init__(self, base_url: str) -> None:
        self.host, port = base_url.removeprefix("http://").split(":")
        self.port = int(port)
        self.chat = _request_bytes(f"{self.host}:{port}", REQUEST_BODY)
        self.stream = _request_bytes(f"{self.host}:{port}", STREAM_BODY)
        self._idle: list[Connection] = []

    async def send(self, request: bytes) -> tuple[int, float | None]:
        connection = self._take() or await self._connect()
        try:
            answer = await connection.exchange(request)
        except BaseException:
            connection._fail(ConnectionAbortedError("request abandoned"))
            raise
        if connection.reusable and connection.open:
            self._idle.append(connection)
        elif connection.transport is not None:
            connection.transport.close()
        return answer

    def _take(self) -> Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.open:
                return connection
        return None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(Connection, self.host, self.port)
        return connection

    def close(self) -> None:
        for connection in self._idle:
            if connection.transport is not None:
                connection.transport.close()
        self._idle.clear()


def _request_bytes(host: str, body: bytes) -> bytes:
    head = [f"POST {CHAT} HTTP/1.1", f"host: {host}", *CLIENT_HEADERS]
    head.append(f"content-length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@contextlib.asynccontextmanager
async def load_client(server: Endpoint) -> AsyncIterator[LoadClient]:
    client = LoadClient(server.url)
    try:
        yield client
    finally:
        client.close()


async def post_chat(client: LoadClient) -> float | None:
    """Seconds for one non-streamed chat completion, or None if it failed."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            status, _ = await client.send(client.chat)
    except (OSError, TimeoutError, httptools.HttpParserError):
        return None
    return time.perf_counter() - started if status == 200 else None


async def first_chunk(client: LoadClient) -> float | None:
    """Seconds to the first SSE event of a streamed chat completion (the whole stream is
    read), or None if it failed."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            status, first = await client.send(client.stream)
    except (OSError, TimeoutError, httptools.HttpParserError):
        return None
    return first - started if status == 200 and first is not None else None


# --- phases -----------------------------------------------------------------------------

Measure = Callable[[LoadClient], Awaitable[float | None]]


async def alternating(
    measure: Measure, servers: Mapping[str, Endpoint], n: int, warm: int
) -> dict[str, list[float | None]]:
    """``n`` sequential measurements of each server, interleaved, the order rotating so
    that no server always follows another; ``warm`` unrecorded rounds first."""
    names = list(servers)
    samples: dict[str, list[float | None]] = {name: [] for name in names}
    clients = {name: LoadClient(server.url) for name, server in servers.items()}
    try:
        for i in range(-warm, n):
            turn = i % len(names)
            for name in names[turn:] + names[:turn]:
                seconds = await measure(clients[name])
                if i >= 0:
                    samples[name].append(seconds)
    finally:
        for client in clients.values():
            client.close()
    return samples


@dataclass
class RatePhase:
    target: str
    rate: int
    sent: int
    errors: int
    achieved: float
    p50_ms: float
    p99_ms: float
    lag_p99_ms: float
    cpu_ms_per_request: float
    cpu_percent: float
    client_cpu_percent: float


async def open_loop(target: str, server: Endpoint, rate: int, seconds: float) -> RatePhase:
    """Launch ``rate`` requests a second for ``seconds`` on a fixed schedule, whether or
    not earlier ones have finished."""
    count = max(1, round(rate * seconds))
    async with load_client(server) as client:
        await post_chat(client)
        cpu_before, client_before = cpu_seconds(server.pid), time.process_time()
        began = time.perf_counter() + 0.01
        lags: list[float] = []
        tasks: list[asyncio.Task[float | None]] = []
        for i in range(count):
            due = began + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            lags.append(time.perf_counter() - due)
            tasks.append(asyncio.create_task(post_chat(client)))
        results = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
        client_cpu = time.process_time() - client_before
    await asyncio.sleep(SETTLE_SECONDS)
    cpu = cpu_seconds(server.pid) - cpu_before
    ok = [r for r in results if r is not None]
    return RatePhase(
        target=target,
        rate=rate,
        sent=count,
        errors=count - len(ok),
        achieved=round(len(ok) / elapsed, 1),
        p50_ms=ms(percentile(ok, 50)),
        p99_ms=ms(percentile(ok, 99)),
        lag_p99_ms=ms(percentile(lags, 99)),
        cpu_ms_per_request=ms(cpu / max(1, len(ok))),
        cpu_percent=round(100 * cpu / (elapsed + SETTLE_SECONDS), 1),
        client_cpu_percent=round(100 * client_cpu / elapsed, 1),
    )


async def closed_loop(server: Endpoint, seconds: float) -> tuple[float, int]:
    """Requests a second with ``CONCURRENCY`` always in flight, and the errors."""
    done = [0, 0]
    async with load_client(server) as client:
        await asyncio.gather(*(post_chat(client) for _ in range(CONCURRENCY)))
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                done[await post_chat(client) is None] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return done[0] / (time.perf_counter() - started), done[1]


# --- percentiles ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN when there are no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
