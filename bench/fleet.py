"""The server processes of the overhead benchmark: the fake teacher, the floor, stillroom
proxies (one worker or several, capture on or off) and ``stillroom serve``, each in a
process of its own, stopped in bounded time when the benchmark ends (Ctrl-C, SIGTERM or
its own death included).

On a machine with two cores or more, the servers under test are pinned to the last core
and the benchmark itself (load generator) and the fake teacher to the others, so that the
proxy and the floor it is compared with get the same single core.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

BENCH = Path(__file__).resolve().parent
Placement = Literal["test", "side", "all"]
STILLROOM = str(Path(sys.executable).parent / "stillroom")


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


@functools.cache
def cores() -> tuple[set[int], set[int]]:
    """(the servers' cores, the load generator's and teacher's): the last core and the
    rest, or all cores for both on a one-core machine. Read once, before any pinning."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return set(available), set(available)
    return {available[-1]}, set(available[:-1])


def pin_self() -> None:
    """Keep this process (the load generator) off the servers' core."""
    os.sched_setaffinity(0, cores()[1])


def _before_exec(cpus: set[int]) -> Callable[[], None]:
    def setup() -> None:
        # Receive SIGTERM if the benchmark dies, even by SIGKILL (PR_SET_PDEATHSIG).
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)
        os.sched_setaffinity(0, cpus)

    return setup


class Fleet:
    """The server processes of one run; all are stopped, in bounded time, on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = []

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        port: int,
        *,
        where: Placement = "test",
        timeout: float = 60.0,
    ) -> Server:
        """Start a server and wait for its ``/healthz``; on the servers' core (``test``),
        beside the load generator (``side``: the teacher) or on every core (``all``)."""
        log = self.workdir / f"{name}.log"
        servers, others = cores()
        cpus = {"test": servers, "side": others, "all": servers | others}[where]
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_before_exec(cpus) if sys.platform == "linux" else None,
            )
        server = Server(name, f"http://127.0.0.1:{port}", process, log)
        self.servers.append(server)
        _wait_healthy(server, timeout)
        return server

    def stop(self, server: Server, grace: float = 5.0) -> None:
        self._signal(server, signal.SIGTERM)
        try:
            server.process.wait(grace)
        except subprocess.TimeoutExpired:
            self._signal(server, signal.SIGKILL)
            server.process.wait(2)
        self.servers.remove(server)

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
        self.servers.clear()

    @staticmethod
    def _signal(server: Server, signum: int) -> None:
        if server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.pid, signum)

    # --- the servers of the benchmark ----------------------------------------------------

    def teacher(self) -> Server:
        port = free_port()
        argv = [sys.executable, str(BENCH / "overhead.py"), "--serve-teacher", str(port)]
        return self.start("teacher", argv, dict(os.environ), port, where="side")

    def floor(self, teacher: Server, *, workers: int = 1) -> Server:
        port = free_port()
        argv = [sys.executable, str(BENCH / "overhead.py"), "--serve-floor", str(port)]
        argv += ["--teacher", teacher.url + "/v1", "--workers", str(workers)]
        where: Placement = "test" if workers == 1 else "all"
        return self.start(f"floor-{workers}w", argv, dict(os.environ), port, where=where)

    def proxy(self, teacher: Server, *, capture: bool, workers: int = 1) -> Server:
        port = free_port()
        argv = [STILLROOM, "proxy", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--workers", str(workers)]
        env = stillroom_env(teacher, self.workdir / f"capture-{capture}-{workers}w")
        env["STILLROOM_CAPTURE"] = "true" if capture else "false"
        name = f"proxy-capture-{'on' if capture else 'off'}-{workers}w"
        return self.start(name, argv, env, port, where="test" if workers == 1 else "all")


def stillroom_env(teacher: Server, folder: Path) -> dict[str, str]:
    """The environment of a stillroom process on ``teacher``, with its store and data
    in ``folder``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")}
    env |= {
        "STILLROOM_TEACHER_URL": teacher.url + "/v1",
        "STILLROOM_DATABASE_URL": f"sqlite:///{folder}/bench.db",
        "STILLROOM_DATA_DIR": str(folder / "data"),
        "STILLROOM_LOG_LEVEL": "warning",
        # One team: the benchmarks publish tasks by bare name and send one key.
        "STILLROOM_TENANCY": "single",
        "NO_PROXY": ",".join(filter(None, ("127.0.0.1", env.get("NO_PROXY")))),
    }
    return env


def _wait_healthy(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/healthz", timeout=1.0, trust_env=False).status_code == 200:
                return
        time.sleep(0.1)
    tail = server.log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{server.name} did not become healthy at {server.url}:\n{tail}")
