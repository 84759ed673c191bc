"""``stillroom serve``'s distiller, in a child process of its own.

Training is minutes of CPU (or GPU) work and the distiller's loops query the store; in
the proxy's process they would hold the GIL and the event loop while requests wait (a
LoRA epoch in a worker thread took the proxy's ``/healthz`` from a 2.8 ms to a 135 ms
maximum). So ``serve`` runs the distiller's whole work (the scheduler and training, drift
checks and the threshold controller, keeping published adapters loaded in the student
server) as ``stillroom distiller`` does, in a fresh interpreter started here: its
settings passed on in ``STILLROOM_*`` variables, its niceness raised so that the proxy
wins the CPU when both want it, its metrics written to files that the proxy's
``/metrics`` serves (:meth:`core.metrics.Metrics.include_distiller`).

:class:`DistillerProcess` starts it, restarts it when it dies (after a pause that grows
while it keeps dying), stops it with the proxy, and says how it is for ``/readyz``.
Run as a module, this file is the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from core.metrics import MULTIPROCESS_ENV
from core.settings import Settings
from proxy.processes.environment import settings_environment

log = logging.getLogger("stillroom")

NICENESS = 10
STOP_SECONDS = 10.0
FIRST_PAUSE, LONGEST_PAUSE = 1.0, 60.0
HEALTHY_AFTER = 60.0  # a child that ran this long is not crash-looping


class DistillerProcess:
    """The distiller's child process, kept running."""

    def __init__(self, settings: Settings, metrics_directory: Path) -> None:
        self.settings = settings
        self.metrics_directory = metrics_directory
        self._process: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._state = "starting"
        self.restarts = 0

    @property
    def state(self) -> str:
        """``ok`` while the child runs, else what happened to it."""
        return self._state

    async def start(self) -> None:
        self.metrics_directory.mkdir(parents=True, exist_ok=True)
        await self._spawn()
        self._watch = asyncio.create_task(self._keep_running(), name="stillroom-distiller")

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def _spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")}
        env |= settings_environment(self.settings)
        env[MULTIPROCESS_ENV] = str(self.metrics_directory)
        argv = [sys.executable, "-m", "proxy.processes.distiller_process", str(_free_port())]
        self._process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL
        )
        self._state = "ok"
        log.info("distiller running in process %d", self._process.pid)

    async def _keep_running(self) -> None:
        pause = FIRST_PAUSE
        while True:
            assert self._process is not None
            began = time.monotonic()
            code = await self._process.wait()
            if time.monotonic() - began >= HEALTHY_AFTER:
                pause = FIRST_PAUSE
            self._state = f"exited with status {code}; restarting in {pause:g} s"
            log.error("the distiller's process %d %s", self._process.pid, self._state)
            await asyncio.sleep(pause)
            pause = min(LONGEST_PAUSE, pause * 2)
            self.restarts += 1
            try:
                await self._spawn()
            except OSError as exc:
                self._state = f"could not start: {exc}"
                log.error("could not start the distiller's process: %s", exc)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _child(port: int) -> None:
    """The child: die with the proxy, yield the CPU to it, run the distiller."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.nice(NICENESS)
    from core.settings import load_settings
    from proxy.processes.servers import configure_logging, run_distiller

    settings = load_settings()
    configure_logging(settings)
    run_distiller(settings, host="127.0.0.1", port=port)


if __name__ == "__main__":
    _child(int(sys.argv[1]))
