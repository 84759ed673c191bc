"""``create_app(settings)``: the proxy, assembled. Nothing happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from core.classifier import encoder_id
from core.embedding import Encoder, default_embedding_model
from core.metrics import Metrics, forget_dead_processes, leave_multiprocess
from core.settings import Settings, load_settings
from core.store import create_store_engine, create_tables
from distiller.backends import DEFAULT_EMBEDDED_URL, create_student_backend
from proxy.admin import api as admin
from proxy.admin import feedback, forget, imports
from proxy.gateway import ops
from proxy.gateway.capture import CaptureWriter
from proxy.gateway.errors import install_error_handlers
from proxy.gateway.retries import RetryRules
from proxy.gateway.routes import install_openai_routes
from proxy.gateway.runtime import Runtime
from proxy.gateway.teacher import Teacher, create_teacher_http_client
from proxy.gateway.tenancy import warn_of_stranded_students
from proxy.processes.distiller_process import DistillerProcess
from proxy.processes.heap import freeze_start_up_heap, thaw_heap
from router.classifier import ClassifierStudent
from router.difficulty import DifficultyGate
from router.extractor import ExtractorStudent
from router.policy import PolicyCache
from router.route import Router
from router.scoring import Scorer
from router.student import StudentClient, Students, prepare_students

log = logging.getLogger("stillroom.proxy")


def create_app(
    settings: Settings | None = None,
    *,
    teacher_transport: httpx.AsyncBaseTransport | None = None,
    registry: CollectorRegistry | None = None,
    distiller: bool = False,
) -> FastAPI:
    """The proxy app. Its lifespan owns the teacher client, the store engine, the capture
    writer and, with ``distiller``, the distiller's child process (``stillroom serve``:
    see :mod:`proxy.processes.distiller_process`). ``teacher_transport`` and ``registry``
    let tests inject their own."""
    settings = settings if settings is not None else load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await _start(settings, teacher_transport, registry)
        app.state.runtime = runtime
        freeze_start_up_heap()
        try:
            async with contextlib.AsyncExitStack() as stack:
                if distiller:
                    await stack.enter_async_context(_distiller_process(settings, runtime))
                yield
        finally:
            await _stop(runtime)

    app = FastAPI(
        title="stillroom",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(admin.router)
    app.include_router(feedback.router)
    app.include_router(forget.router)
    app.include_router(imports.router)
    install_openai_routes(app)
    return app


@asynccontextmanager
async def _distiller_process(settings: Settings, runtime: Runtime) -> AsyncIterator[None]:
    """The distiller in a child process, its metrics in ``/metrics`` and its state in
    ``/readyz``, for as long as the app runs."""
    with tempfile.TemporaryDirectory(prefix="stillroom-distiller-metrics-") as folder:
        child = DistillerProcess(settings, Path(folder))
        runtime.metrics.include_distiller(Path(folder))
        runtime.processes["distiller"] = lambda: child.state
        await child.start()
        try:
            yield
        finally:
            await child.close()


def create_app_from_environment() -> FastAPI:
    """Factory for ``uvicorn --factory`` (several workers): settings from the environment."""
    return create_app(load_settings())


async def _start(
    settings: Settings,
    teacher_transport: httpx.AsyncBaseTransport | None,
    registry: CollectorRegistry | None,
) -> Runtime:
    forget_dead_processes()
    metrics = Metrics(registry)
    engine = create_store_engine(settings.database_url)
    try:
        await asyncio.to_thread(create_tables, engine)
        await asyncio.to_thread(warn_of_stranded_students, engine, settings)
    except sa.exc.OperationalError as exc:
        # Serve anyway: capture spills to disk and writes once the store is back.
        log.error("store unreachable at start-up; exchanges will spill to disk: %s", exc.orig)
    http_client = create_teacher_http_client(settings, teacher_transport)
    capture = None
    if settings.capture:
        capture = CaptureWriter(
            engine=engine,
            spill_dir=settings.data_dir / "spill",
            metrics=metrics,
            queue_size=settings.capture_queue_size,
            batch_size=settings.capture_batch_size,
            flush_seconds=settings.capture_flush_seconds,
            retry_seconds=settings.capture_retry_seconds,
            retries=RetryRules.of(settings),
        )
        await capture.start()
    teacher = Teacher(base_url=settings.teacher_url, client=http_client, metrics=metrics)
    student_client = StudentClient(
        base_urls=settings.student_replica_urls or [DEFAULT_EMBEDDED_URL],
        client=http_client,
        timeout=settings.student_timeout_seconds,
        refresh_seconds=settings.student_refresh_seconds,
    )
    await student_client.start()
    encoder = Encoder(settings.embedding_model, threads=settings.proxy_torch_threads)
    classifiers = ClassifierStudent(
        engine=engine,
        encoder=encoder,
        encoder_name=encoder_id(settings.embedding_model),
        max_heads=settings.classifier_max_heads,
    )
    extractors = ExtractorStudent(
        engine=engine,
        encoder_path=settings.embedding_model or default_embedding_model(),
        encoder_name=encoder_id(settings.embedding_model),
    )
    students = Students(
        {"lora": student_client, "classifier": classifiers, "extractor": extractors}
    )
    scorer = Scorer(
        engine=engine,
        student=students,
        metrics=metrics,
        similarity=encoder.similarity,
        text_threshold=settings.text_similarity_threshold,
    )
    await scorer.start()
    policies = PolicyCache(
        engine,
        settings=settings,
        ttl=settings.policy_refresh_seconds,
        metrics=metrics,
        prepare=lambda policies: prepare_students(policies, classifiers, extractors),
    )
    await policies.start()
    difficulty = None
    if settings.difficulty_gate:
        difficulty = DifficultyGate(
            engine=engine,
            encoder=encoder,
            neighbours=settings.difficulty_neighbours,
            min_agreement=settings.difficulty_min_agreement,
        )
    return Runtime(
        router=Router(
            students=students,
            embedder=classifiers,
            difficulty=difficulty,
            metrics=metrics,
            batch_window_seconds=settings.embedding_batch_ms / 1000,
            batch_max=settings.embedding_batch_max,
        ),
        difficulty=difficulty,
        policies=policies,
        students=students,
        student_client=student_client,
        classifiers=classifiers,
        scorer=scorer,
        student_backend=create_student_backend(settings, http_client),
        settings=settings,
        metrics=metrics,
        engine=engine,
        http_client=http_client,
        teacher=teacher,
        capture=capture,
    )


async def _stop(runtime: Runtime) -> None:
    await runtime.policies.close()
    await runtime.scorer.close()
    await runtime.student_client.close()
    if runtime.capture is not None:
        await runtime.capture.close()
    await runtime.http_client.aclose()
    runtime.engine.dispose()
    leave_multiprocess()
    thaw_heap()
