"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from core.store import ping
from proxy.gateway.deps import RuntimeDep

router = APIRouter(include_in_schema=False)

_READY_TIMEOUT = 5.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Ready: the store answers a query and takes exchanges (its schema fits this build),
    the teacher answers HTTP (any status), and the processes this one depends on (the
    distiller of ``stillroom serve``) run."""
    store, teacher = await asyncio.gather(_check_store(runtime), _check_teacher(runtime))
    checks = {"store": store, "teacher": teacher}
    checks |= {name: state() for name, state in runtime.processes.items()}
    ready = all(check == "ok" for check in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", **checks},
        status_code=200 if ready else 503,
    )


async def _check_store(runtime: RuntimeDep) -> str:
    try:
        await asyncio.wait_for(asyncio.to_thread(ping, runtime.engine), _READY_TIMEOUT)
    except TimeoutError:
        return "timeout"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    # The store answers, yet refuses exchanges: say why (it needs `stillroom db upgrade`,
    # or a newer stillroom), rather than look ready while every exchange is spilled.
    fault = runtime.capture.schema_fault if runtime.capture is not None else None
    if fault is not None:
        return f"error: schema: {fault}"
    return "ok"


async def _check_teacher(runtime: RuntimeDep) -> str:
    headers = {}
    if runtime.teacher_key is not None:
        headers["authorization"] = f"Bearer {runtime.teacher_key}"
    try:
        response = await runtime.http_client.get(
            runtime.teacher.url("/v1/models"), headers=headers, timeout=_READY_TIMEOUT
        )
    except httpx.HTTPError as exc:
        return f"error: {type(exc).__name__}"
    if response.status_code >= 500:
        return f"error: HTTP {response.status_code}"
    return "ok"


@router.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus text format: this process's metrics, or with several workers
    (``PROMETHEUS_MULTIPROC_DIR``) those of all of them."""
    return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
