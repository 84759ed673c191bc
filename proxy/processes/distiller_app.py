"""``stillroom distiller`` as a small HTTP app: its lifespan runs the scheduler (training
and publishing), the drift checks and the adapter sync; its routes are ``/healthz`` and
``/metrics``, so that Prometheus can scrape training and drift metrics from it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.embedding import Encoder
from core.metrics import Metrics, leave_multiprocess
from core.settings import Settings
from core.store import create_store_engine, create_tables
from distiller.backends import StudentReplicas, create_student_backend
from distiller.pipeline import Pipeline
from distiller.registry import sync_adapters
from distiller.scheduler import Distiller
from router.drift import DriftMonitor, drift_loop

log = logging.getLogger("stillroom")

ADAPTER_SYNC_SECONDS = 30.0


def create_distiller_app(
    settings: Settings, *, registry: CollectorRegistry | None = None
) -> Starlette:
    """The distiller process. ``registry`` lets tests read its metrics."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        metrics = Metrics(registry)
        app.state.metrics = metrics
        engine = create_store_engine(settings.database_url)
        await asyncio.to_thread(create_tables, engine)
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0)) as client:
            work = distiller_work(
                settings=settings,
                engine=engine,
                backend=create_student_backend(settings, client),
                metrics=metrics,
            )
            async with work:
                log.info(
                    "distiller running: looking for tasks every %ss",
                    settings.distill_interval_seconds,
                )
                try:
                    yield
                finally:
                    engine.dispose()
                    leave_multiprocess()

    return Starlette(
        routes=[
            Route("/healthz", _healthz, methods=["GET"]),
            Route("/metrics", _metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


@asynccontextmanager
async def distiller_work(
    *,
    settings: Settings,
    engine: Engine,
    backend: StudentReplicas,
    metrics: Metrics,
) -> AsyncIterator[Distiller]:
    """The distiller's work, for ``stillroom distiller`` and ``serve``'s distiller process
    alike: the training scheduler, drift checks of live and shadow tasks (one process per
    deployment runs them), and re-loading active adapters into every student server
    replica that lacks them (it restarted, or was down at publish)."""
    pipeline = Pipeline(
        settings=settings,
        engine=engine,
        backend=backend,
        encoder=Encoder(settings.embedding_model),
        metrics=metrics,
    )
    distiller = Distiller(pipeline)
    distiller.start()
    monitor = DriftMonitor(
        engine=engine, encoder=pipeline.encoder, settings=settings, metrics=metrics
    )
    drift = drift_loop(monitor, settings.drift_check_seconds)
    drift.start()
    adapters = asyncio.create_task(_keep_adapters_loaded(engine, backend))
    try:
        yield distiller
    finally:
        adapters.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await adapters
        distiller.stop()
        await drift.close()


async def _healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _metrics(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def _keep_adapters_loaded(engine: Engine, backend: StudentReplicas) -> None:
    """Load active adapters into each student server replica that lacks them (it
    restarted, is new, or was down when they were published), now and every
    ``ADAPTER_SYNC_SECONDS``."""
    while True:
        try:
            report = await sync_adapters(engine=engine, backend=backend)
        except Exception as exc:  # the store may be away; the next round may succeed
            log.warning("could not sync adapters with the student servers: %s", exc)
        else:
            for url, name in report.loaded:
                log.info("loaded active adapter %s into the student server at %s", name, url)
            for url, why in report.failed:
                log.warning("could not sync adapters with the student server at %s: %s", url, why)
        await asyncio.sleep(ADAPTER_SYNC_SECONDS)
