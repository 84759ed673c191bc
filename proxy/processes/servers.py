"""The long-running processes: the proxy (alone or with everything), the embedded student
server and the distiller. The CLI parses flags; this module runs things."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from core.metrics import MULTIPROCESS_ENV, reset_multiprocess_directory
from core.settings import Settings
from distiller.base_model import resolve_base_model
from distiller.student_server import create_student_app
from proxy.processes.environment import settings_environment

log = logging.getLogger("stillroom")


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The scheduler logs every run of its 2-second poll at INFO, and at WARNING each poll
    # it skips while a training run (minutes long) is still going: neither is news.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


def _uvicorn_options(settings: Settings, host: str, port: int) -> dict[str, Any]:
    return {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": settings.log_level,
        "access_log": False,
        "timeout_graceful_shutdown": 30,
    }


def run_proxy(settings: Settings, *, workers: int = 1, distiller: bool = False) -> None:
    """The proxy in the foreground; with ``distiller``, the distiller in a child process.
    Several workers share their metrics (see :func:`_metrics_shared_by_workers`)."""
    options = _uvicorn_options(settings, settings.host, settings.port)
    if workers > 1:
        # Each worker builds its own app from the environment, so hand the settings on.
        os.environ.update(settings_environment(settings))
        with _metrics_shared_by_workers():
            uvicorn.run(
                "proxy.processes.app:create_app_from_environment",
                factory=True,
                workers=workers,
                **options,
            )
        return
    reset_multiprocess_directory()
    from proxy.processes.app import create_app

    uvicorn.run(create_app(settings, distiller=distiller), **options)


@contextmanager
def _metrics_shared_by_workers() -> Iterator[None]:
    """Workers write their metrics to files in ``PROMETHEUS_MULTIPROC_DIR`` (emptied here
    first), or, when it is unset, in a temporary folder removed at exit. uvicorn spawns
    fresh interpreters, so the variable set here reaches them before they load
    prometheus_client."""
    if os.environ.get(MULTIPROCESS_ENV):
        reset_multiprocess_directory()
        yield
        return
    with tempfile.TemporaryDirectory(prefix="stillroom-metrics-") as folder:
        os.environ[MULTIPROCESS_ENV] = folder
        try:
            yield
        finally:
            del os.environ[MULTIPROCESS_ENV]


def run_everything(settings: Settings, *, student_port: int) -> None:
    """``stillroom serve``: the proxy and (unless a student server is configured) the
    embedded student server in this process, the distiller in a child process of the
    proxy's (:mod:`proxy.processes.distiller_process`)."""
    student: _StudentThread | None = None
    if not settings.student_replica_urls and settings.student_backend == "embedded":
        student = _StudentThread(settings, "127.0.0.1", student_port)
        student.start()
        settings = settings.model_copy(update={"student_url": f"http://127.0.0.1:{student_port}"})
    try:
        run_proxy(settings, distiller=True)
    finally:
        if student is not None:
            student.stop()


class _StudentThread(threading.Thread):
    """The embedded student server beside the proxy. The base model is prepared (converted
    on first use) here, so the proxy serves at once."""

    def __init__(self, settings: Settings, host: str, port: int) -> None:
        super().__init__(name="stillroom-student", daemon=True)
        self.settings, self.host, self.port = settings, host, port
        self.server: uvicorn.Server | None = None

    def run(self) -> None:
        try:
            self.server = _student_server(self.settings, self.host, self.port)
            self.server.run()
        except Exception:
            log.exception("the embedded student server stopped")

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.join(timeout=30)


def _student_server(settings: Settings, host: str, port: int) -> uvicorn.Server:
    base = resolve_base_model(settings.base_model, settings.data_dir)
    log.info("student server: base model %s on %s:%d", base, host, port)
    app = create_student_app(base_model=base)
    return uvicorn.Server(uvicorn.Config(app, **_uvicorn_options(settings, host, port)))


def run_student(settings: Settings, *, host: str, port: int) -> None:
    """``stillroom student``: the embedded student server alone."""
    _student_server(settings, host, port).run()


def run_distiller(settings: Settings, *, host: str, port: int) -> None:
    """``stillroom distiller``: the scheduler, training, drift checks and adapter sync,
    with ``/metrics`` and ``/healthz`` on ``host:port``."""
    from proxy.processes.distiller_app import create_distiller_app

    reset_multiprocess_directory()
    uvicorn.run(create_distiller_app(settings), **_uvicorn_options(settings, host, port))
