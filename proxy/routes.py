"""The OpenAI-compatible routes. Each only picks a handler."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from proxy.chat import chat_completions
from proxy.deps import ClientKeyDep, RuntimeDep
from proxy.passthrough import pass_through

router = APIRouter(prefix="/v1", dependencies=[ClientKeyDep], include_in_schema=False)


@router.post("/chat/completions")
async def post_chat_completions(request: Request, runtime: RuntimeDep) -> Response:
    return await chat_completions(request, runtime)


@router.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
)
async def any_other_path(request: Request, runtime: RuntimeDep) -> Response:
    return await pass_through(request, runtime)
