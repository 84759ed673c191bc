"""Proxy overhead: the time and CPU stillroom adds to a chat completion.

A fake teacher (a raw uvicorn ASGI app that answers at once) and the stillroom proxy in
front of it each run in a process of their own; this process is the load generator and
sends the same request, with the same httpx client, to the proxy and to the teacher
directly ("direct"). Phases:

- sequential: one request at a time, proxy and direct alternating;
- stream first chunk: time to the first SSE ``data:`` event, alternating the same way;
- open loop: requests launched on a fixed schedule (100, 300, 500 req/s) whether or not
  earlier ones have finished, so a server that falls behind builds a queue; the server's
  CPU time over the phase divided by the requests it served is its CPU per request;
- throughput: closed loop, 32 requests in flight; a proxy with capture on and one with
  capture off, in alternating windows (on, off, off, on).

How to read it. The fake teacher answers in well under a millisecond, so "direct" is the
cost of the client, the loopback and a trivial server, and overhead (proxy minus direct,
percentile by percentile) is the proxy's own time. All processes share this machine's
cores: the load generator and the fake teacher take CPU the proxy would have to itself in
production, so saturation figures are a lower bound on a small machine. "lag p99" is how
late the generator launched requests; when it reaches milliseconds the generator was
starved of CPU and the rate figures at that row are suspect. Percentiles are nearest-rank.

Run: ``.venv/bin/python bench/overhead.py [--quick] [--json FILE] [--profile FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, cast

import httptools
import httpx
import orjson
import uvicorn
import uvloop

REPO = Path(__file__).resolve().parent.parent
CHAT = "/v1/chat/completions"
CONCURRENCY = 32
RATES = (100, 300, 500)
SETTLE_SECONDS = 0.5  # after a phase, so the capture writer's flush is counted in it

# --- what is sent and answered ----------------------------------------------------------

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
REQUEST_TIMEOUT = 10.0

_ID, _CREATED, _MODEL, _FINGERPRINT = (
    "chatcmpl-BmQy3XkV0y9rT2cWq8aJxZk1fLh7P",
    1_741_569_952,
    "gpt-4o-mini-2024-07-18",
    "fp_06737a9306",
)
_PIECES = (
    "billing.refund",
    ": the customer",
    " was charged twice",
    " for March",
    " and wants one back.",
)
_USAGE = {
    "prompt_tokens": 231,
    "completion_tokens": 17,
    "total_tokens": 248,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}
COMPLETION = orjson.dumps(
    {
        "id": _ID,
        "object": "chat.completion",
        "created": _CREATED,
        "model": _MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "".join(_PIECES),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _USAGE,
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }
)
TEACHER_HEADERS = [
    (b"openai-organization", b"bench-org"),
    (b"openai-processing-ms", b"412"),
    (b"openai-version", b"2020-10-01"),
    (b"x-ratelimit-limit-requests", b"30000"),
    (b"x-ratelimit-remaining-requests", b"29999"),
    (b"x-request-id", b"req_4f1c0e6b7a9d4d2f8e3b1a0c9d8e7f6a"),
]


def _event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    chunk = {
        "id": _ID,
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": _MODEL,
        "system_fingerprint": _FINGERPRINT,
        "choices": choices,
        **extra,
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def stream_events(*, include_usage: bool) -> list[bytes]:
    """Role chunk, content chunks, finish chunk, the usage chunk if asked, ``[DONE]``."""
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _event([choice], **extra)

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": piece}) for piece in _PIECES]
    events.append(chunk({}, "stop"))
    if include_usage:
        events.append(_event([], usage=_USAGE))
    return [*events, b"data: [DONE]\n\n"]


# --- the fake teacher -------------------------------------------------------------------

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
_STREAMS = {flag: stream_events(include_usage=flag) for flag in (False, True)}


async def teacher_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """An OpenAI-compatible teacher that answers every chat completion at once."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "POST" and scope["path"] == CHAT:
        request = orjson.loads(body)
        if request.get("stream"):
            options = request.get("stream_options") or {}
            await _send_stream(send, _STREAMS[bool(options.get("include_usage"))])
        else:
            await _send_whole(send, 200, COMPLETION)
    elif scope["path"] in ("/healthz", "/v1/models"):
        await _send_whole(send, 200, b'{"object":"list","data":[]}')
    else:
        await _send_whole(send, 404, b'{"error":{"message":"not found","type":"invalid"}}')


async def _send_whole(send: Send, status: int, content: bytes) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        *TEACHER_HEADERS,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


async def _send_stream(send: Send, events: list[bytes]) -> None:
    headers = [(b"content-type", b"text/event-stream; charset=utf-8"), *TEACHER_HEADERS]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for event in events:
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def serve_teacher(port: int) -> None:
    uvicorn.run(
        teacher_app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )


# --- processes --------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM if the benchmark dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Fleet:
    """The server processes of one run; all are stopped, in bounded time, on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = []

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_all()

    def start(self, name: str, argv: list[str], env: dict[str, str], port: int) -> Server:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        server = Server(name, f"http://127.0.0.1:{port}", process, log)
        self.servers.append(server)
        _wait_healthy(server)
        return server

    def stop(self, server: Server, grace: float = 5.0) -> None:
        self._signal(server, signal.SIGTERM)
        try:
            server.process.wait(grace)
        except subprocess.TimeoutExpired:
            self._signal(server, signal.SIGKILL)
            server.process.wait(2)

    def stop_all(self, grace: float = 5.0) -> None:
        for server in self.servers:
            self._signal(server, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for server in self.servers:
            try:
                server.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(server, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.process.wait(2)

    @staticmethod
    def _signal(server: Server, signum: int) -> None:
        if server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.pid, signum)


def _wait_healthy(server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/healthz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    tail = server.log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{server.name} did not become healthy at {server.url}:\n{tail}")


def proxy_env(teacher: Server, workdir: Path, *, capture: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")}
    env |= {
        "STILLROOM_TEACHER_URL": teacher.url + "/v1",
        "STILLROOM_DATABASE_URL": f"sqlite:///{workdir}/bench.db",
        "STILLROOM_DATA_DIR": str(workdir / "data"),
        "STILLROOM_LOG_LEVEL": "warning",
        "STILLROOM_CAPTURE": "true" if capture else "false",
    }
    return env


def start_proxy(fleet: Fleet, teacher: Server, *, capture: bool) -> Server:
    port = free_port()
    argv = [str(Path(sys.executable).parent / "stillroom"), "proxy"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    env = proxy_env(teacher, fleet.workdir, capture=capture)
    return fleet.start(f"proxy-capture-{'on' if capture else 'off'}", argv, env, port)


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# --- load -------------------------------------------------------------------------------


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
async def load_client(server: Server) -> AsyncIterator[LoadClient]:
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


Measure = Callable[[LoadClient], Awaitable[float | None]]


async def alternating(
    measure: Measure, servers: dict[str, Server], n: int, warm: int
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


async def open_loop(target: str, server: Server, rate: int, seconds: float) -> RatePhase:
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


async def closed_loop(server: Server, seconds: float) -> tuple[float, int]:
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


async def throughput(servers: dict[str, Server], seconds: float) -> dict[str, Any]:
    """Closed-loop rate of the teacher alone, then of the proxy with capture on and off
    in windows on, off, off, on (so a drift in the machine's speed cancels out)."""
    window = seconds / 2
    rates: dict[str, list[float]] = {PROXY: [], NO_CAPTURE: []}
    direct, errors = await closed_loop(servers[DIRECT], window)
    for target in (PROXY, NO_CAPTURE, NO_CAPTURE, PROXY):
        await asyncio.sleep(SETTLE_SECONDS)
        rate, failed = await closed_loop(servers[target], window)
        rates[target].append(rate)
        errors += failed
    on, off = (sum(rates[t]) / len(rates[t]) for t in (PROXY, NO_CAPTURE))
    return {
        "seconds": seconds,
        "direct": round(direct, 1),
        "capture_on": round(on, 1),
        "capture_off": round(off, 1),
        "capture_cost_percent": round(100 * (1 - on / off), 2),
        "errors": errors,
    }


# --- statistics and report --------------------------------------------------------------

DIRECT, PROXY, NO_CAPTURE = "direct", "proxy", "no capture"


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def latency_summary(samples: dict[str, list[float | None]]) -> dict[str, dict[str, float]]:
    """p50, p99 and errors per target; overhead against direct for the others."""
    figures: dict[str, dict[str, float]] = {}
    for name, values in samples.items():
        ok = [v for v in values if v is not None]
        figures[name] = {
            "p50_ms": ms(percentile(ok, 50)),
            "p99_ms": ms(percentile(ok, 99)),
            "errors": len(values) - len(ok),
        }
    for name, row in figures.items():
        if name != DIRECT:
            for q in ("p50", "p99"):
                row[f"overhead_{q}_ms"] = round(row[f"{q}_ms"] - figures[DIRECT][f"{q}_ms"], 3)
    return figures


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [
        line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line
    ]
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": models[0] if models else platform.processor(),
        "python": platform.python_version(),
        "commit": commit or None,
    }


def rate_overheads(phases: list[dict[str, Any]]) -> None:
    """Add, to each proxy row, its overhead against direct at the same rate."""
    direct = {p["rate"]: p for p in phases if p["target"] == DIRECT}
    for phase in phases:
        if phase["target"] != DIRECT:
            base = direct[phase["rate"]]
            for q in ("p50", "p99"):
                phase[f"overhead_{q}_ms"] = round(phase[f"{q}_ms"] - base[f"{q}_ms"], 3)


def aims(results: dict[str, Any]) -> list[dict[str, Any]]:
    at300 = next(p for p in results["open_loop"] if p["rate"] == 300 and p["target"] == PROXY)
    checks = [
        ("sequential overhead p50", results["sequential"][PROXY]["overhead_p50_ms"], 1.5, "ms"),
        ("errors at 300 req/s", at300["errors"], 0, ""),
        ("overhead p99 at 300 req/s", at300["overhead_p99_ms"], 5.0, "ms"),
        ("proxy CPU per request at 300 req/s", at300["cpu_ms_per_request"], 2.0, "ms"),
        ("throughput cost of capture", results["throughput"]["capture_cost_percent"], 10, "%"),
    ]
    return [
        {"aim": name, "value": value, "limit": limit, "unit": unit, "met": value <= limit}
        for name, value, limit, unit in checks
    ]


def _latency_lines(title: str, figures: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    for q in ("p50", "p99"):
        cells = f"{figures[DIRECT][f'{q}_ms']:>9.3f}"
        for target in (PROXY, NO_CAPTURE):
            row = figures[target]
            cells += f"{row[f'{q}_ms']:>9.3f}{row[f'overhead_{q}_ms']:>+9.3f}"
        lines.append(f"  {title + ' ' + q:<34}{cells}")
    return lines


def _rate_line(p: dict[str, Any]) -> str:
    overhead = (
        f"{p['overhead_p50_ms']:>+9.3f}{p['overhead_p99_ms']:>+9.3f}"
        if p["target"] != DIRECT
        else " " * 18
    )
    return (
        f"  {p['target']:<11}{p['rate']:>5}{p['achieved']:>7.1f}{p['errors']:>5}"
        f"{p['p50_ms']:>8.2f}{p['p99_ms']:>9.2f}{overhead}{p['cpu_ms_per_request']:>7.3f}"
        f"{p['cpu_percent']:>6.1f}{p['client_cpu_percent']:>6.1f}{p['lag_p99_ms']:>8.2f}"
    )


def report(results: dict[str, Any]) -> str:
    m, tput = results["machine"], results["throughput"]
    lines = [
        f"stillroom proxy overhead, {m['date']}, commit {m['commit']}, "
        f"{'quick' if results['quick'] else 'full'} run",
        f"machine: nproc {m['nproc']}, {m['cpu']}, Python {m['python']}",
        "",
        f"{'latency (ms)':<36}{'direct':>9}{'proxy':>9}{'ovh':>9}{'no capt.':>9}{'ovh':>9}",
        *_latency_lines(f"sequential, n={results['n_sequential']}", results["sequential"]),
        *_latency_lines(f"stream first chunk, n={results['n_stream']}", results["stream"]),
        "",
        f"open loop, {results['rate_seconds']:g} s a row; CPU of the server: ms a request and "
        "% of a core; gen: load generator",
        f"  {'target':<11}{'req/s':>5}{'got/s':>7}{'err':>5}{'p50':>8}{'p99':>9}{'ovh p50':>9}"
        f"{'ovh p99':>9}{'CPU ms':>7}{'CPU%':>6}{'gen%':>6}{'lag p99':>8}",
        *(_rate_line(p) for p in results["open_loop"]),
        "",
        f"throughput, closed loop, {CONCURRENCY} in flight, {tput['seconds']:g} s a target (req/s)",
        f"  direct {tput['direct']:.1f}   proxy capture on {tput['capture_on']:.1f}   "
        f"capture off {tput['capture_off']:.1f}   capture cost {tput['capture_cost_percent']:.1f}%"
        f"   errors {tput['errors']}",
        "",
        "aims",
    ]
    for aim in results["aims"]:
        mark = "met   " if aim["met"] else "MISSED"
        lines.append(
            f"  [{mark}] {aim['aim']:<36}{aim['value']:>9.3f} {aim['unit']:<2} "
            f"(aim <= {aim['limit']:g}{aim['unit']})"
        )
    return "\n".join(lines)


# --- profile (optional) -----------------------------------------------------------------


def py_spy_path() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


async def record_profile(py_spy: str, proxy: Server, rate: int, seconds: float, out: Path) -> str:
    """Sample the proxy with py-spy (on-CPU samples only) under open-loop load."""
    argv = [py_spy, "record", "--pid", str(proxy.pid), "--duration", str(math.ceil(seconds))]
    argv += ["--rate", "200", "--gil", "--format", "raw", "--output", str(out)]
    spy = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    await asyncio.sleep(0.5)
    await open_loop(PROXY, proxy, rate, seconds)
    output, _ = await spy.communicate()
    return output.decode(errors="replace") if spy.returncode else ""


def _frame(frame: str) -> tuple[str, str]:
    """``name (path:line)`` -> (name, path) with the site-packages prefix cut."""
    name, _, where = frame.partition(" (")
    return name, where.rsplit(":", 1)[0].split("site-packages/")[-1].removeprefix(f"{REPO}/")


def _shares(counter: Counter[str], total: int, top: int) -> list[str]:
    return [f"  {100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(top)]


def profile_summary(collapsed: Path, rate: int, top: int = 15) -> str:
    """Where the proxy's CPU went: own time (the innermost frame) by function and by
    package, inclusive time of stillroom's own functions, and the worker-thread share."""
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        name, path = frames[-1]
        own[f"{name} ({path})"] += n
        packages[path.split("/")[0].removesuffix(".py")] += n
        mine = {f"{nm} ({p})" for nm, p in frames if p.startswith(("proxy/", "core/"))}
        for label in mine - {f"{nm} (proxy/cli.py)" for nm in ("main", "proxy", "_run_proxy")}:
            ours[label] += n
        worker = any(p.endswith("concurrent/futures/thread.py") for _, p in frames)
        threads["worker threads (asyncio.to_thread)" if worker else "event loop thread"] += n
    if total == 0:
        return "profile: no samples"
    return "\n".join(
        [
            f"py-spy at {rate} req/s: {total} samples holding the GIL; shares of them",
            "own time by function:",
            *_shares(own, total, top),
            "own time by package:",
            *_shares(packages, total, 10),
            "inclusive time of stillroom functions:",
            *_shares(ours, total, top),
            "by thread:",
            *_shares(threads, total, 2),
            f"collapsed stacks (speedscope, inferno): {collapsed}",
        ]
    )


def profile(runner: asyncio.Runner, proxy: Server, seconds: float, out: Path) -> str:
    py_spy = py_spy_path()
    if py_spy is None:
        return "profile: py-spy not found (.venv/bin/pip install py-spy)"
    failure = runner.run(record_profile(py_spy, proxy, 300, seconds, out))
    if failure or not out.exists():
        return f"profile: py-spy could not record: {failure[-500:]}"
    return profile_summary(out, 300)


# --- main -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    quick: bool
    n_sequential: int
    n_stream: int
    rate_seconds: float
    throughput_seconds: float

    @classmethod
    def of(cls, quick: bool) -> Plan:
        return cls(quick, 300, 150, 2.0, 3.0) if quick else cls(False, 2000, 800, 10.0, 10.0)


async def measure(plan: Plan, servers: dict[str, Server]) -> dict[str, Any]:
    sequential = await alternating(post_chat, servers, plan.n_sequential, warm=100)
    stream = await alternating(first_chunk, servers, plan.n_stream, warm=20)
    phases = []
    for rate in RATES:
        for target, server in servers.items():
            phases.append(asdict(await open_loop(target, server, rate, plan.rate_seconds)))
    rate_overheads(phases)
    return {
        "quick": plan.quick,
        "n_sequential": plan.n_sequential,
        "n_stream": plan.n_stream,
        "rate_seconds": plan.rate_seconds,
        "sequential": latency_summary(sequential),
        "stream": latency_summary(stream),
        "open_loop": phases,
        "throughput": await throughput(servers, plan.throughput_seconds),
    }


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="What the stillroom proxy adds to a request.")
    parser.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write figures here")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="then sample the proxy with py-spy at 300 req/s; collapsed stacks go here",
    )
    parser.add_argument("--serve-teacher", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    plan = Plan.of(args.quick)
    with tempfile.TemporaryDirectory(prefix="stillroom-bench-") as tmp, Fleet(Path(tmp)) as fleet:
        port = free_port()
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve-teacher", str(port)]
        teacher = fleet.start("teacher", argv, dict(os.environ), port)
        servers = {
            DIRECT: teacher,
            PROXY: start_proxy(fleet, teacher, capture=True),
            NO_CAPTURE: start_proxy(fleet, teacher, capture=False),
        }
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = {"machine": machine(), **runner.run(measure(plan, servers))}
            results["aims"] = aims(results)
            print(report(results), flush=True)
            if args.json is not None:
                args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
            if args.profile is not None:
                fleet.stop(servers[NO_CAPTURE])
                out = args.profile.resolve()
                print("\n" + profile(runner, servers[PROXY], plan.rate_seconds, out), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_teacher is not None:
        serve_teacher(args.serve_teacher)
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run(args)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
