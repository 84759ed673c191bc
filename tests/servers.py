"""Real uvicorn servers on 127.0.0.1, each in a thread of its own, for end-to-end tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
import uvicorn
from sqlmodel import Session

from core.store import list_exchanges
from core.tables import Exchange


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerThread:
    """Runs an ASGI app under uvicorn (uvloop + httptools, as in production)."""

    def __init__(self, app: Any, *, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def stored_exchanges(engine: sa.Engine, count: int, timeout: float = 10.0) -> list[Exchange]:
    """Wait until at least ``count`` exchanges are in the store; return them all."""
    found: list[Exchange] = []

    def enough() -> bool:
        nonlocal found
        try:
            with Session(engine) as session:
                found = list(list_exchanges(session=session))
        except sa.exc.OperationalError:
            return False
        return len(found) >= count

    wait_until(enough, timeout)
    return found
