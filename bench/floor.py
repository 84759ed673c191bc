"""The floor of the overhead benchmark: the thinnest proxy our stack allows.

A FastAPI app with one route that reads the request body, forwards it with a pooled
``httpx.AsyncClient`` to the teacher (the headers a proxy must pass on: authorization,
content type, user agent) and returns the teacher's status, body and content type. No
parsing, no capture, no routing, no metrics: what stillroom would cost if it did nothing
but pass bytes through FastAPI, uvicorn and httpx. Every proxy figure of ``overhead.py`` is
printed as a ratio to this one, measured in the same run.

It runs under uvicorn (uvloop, httptools), as the proxy does, in a process of its own,
started by ``overhead.py --serve-floor PORT --teacher URL``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

_TEACHER_ENV = "FLOOR_TEACHER_URL"
_PASSED_ON = ("authorization", "content-type", "accept", "user-agent")


def create_floor_app(teacher_url: str) -> FastAPI:
    """A pass-through of ``POST /v1/chat/completions`` to ``teacher_url`` (ending in /v1)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        async with httpx.AsyncClient(
            base_url=teacher_url, limits=limits, timeout=60.0, trust_env=False
        ) as client:
            app.state.client = client
            yield

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.client
        headers = {k: v for k, v in request.headers.items() if k in _PASSED_ON}
        body = await request.body()
        if b'"stream":true' not in body.replace(b" ", b""):
            answer = await client.post("/chat/completions", content=body, headers=headers)
            return Response(
                answer.content,
                status_code=answer.status_code,
                media_type=answer.headers.get("content-type"),
            )
        upstream = await client.send(
            client.build_request("POST", "/chat/completions", content=body, headers=headers),
            stream=True,
        )
        return StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type"),
            background=BackgroundTask(upstream.aclose),
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def floor_app_from_environment() -> FastAPI:
    """Factory for several uvicorn workers: the teacher's URL from ``FLOOR_TEACHER_URL``."""
    return create_floor_app(os.environ[_TEACHER_ENV])


def serve_floor(port: int, teacher_url: str, *, workers: int = 1) -> None:
    """Serve the floor on 127.0.0.1:``port`` with ``workers`` processes until terminated."""
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,
        "log_level": "warning",
    }
    if workers == 1:
        uvicorn.run(create_floor_app(teacher_url), **options)
        return
    os.environ[_TEACHER_ENV] = teacher_url
    uvicorn.run("floor:floor_app_from_environment", factory=True, workers=workers, **options)
