"""The routes of the APIs apps speak: OpenAI's (Chat Completions, Responses and the
rest passed through) and Anthropic's Messages. Each only checks the client's key and picks
a handler.

Plain Starlette routes, not FastAPI ones: this is the hot path, and dependency solving
measured ~8% of the proxy's CPU per request.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from proxy.gateway.chat import chat_completions
from proxy.gateway.deps import get_runtime, require_client_key
from proxy.gateway.messages import create_message
from proxy.gateway.passthrough import pass_through
from proxy.gateway.response_retrieval import delete_response, get_response, list_input_items
from proxy.gateway.responses import create_response

_PASS_THROUGH_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def post_chat_completions(request: Request) -> Response:
    runtime = get_runtime(request)
    require_client_key(request, runtime)
    return await chat_completions(request, runtime)


async def post_responses(request: Request) -> Response:
    runtime = get_runtime(request)
    require_client_key(request, runtime)
    return await create_response(request, runtime)


async def one_response(request: Request) -> Response:
    runtime = get_runtime(request)
    require_client_key(request, runtime)
    if request.method == "GET":
        return await get_response(request, runtime)
    if request.method == "DELETE":
        return await delete_response(request, runtime)
    return await pass_through(request, runtime)


async def response_input_items(request: Request) -> Response:
    runtime = get_runtime(request)
    require_client_key(request, runtime)
    return await list_input_items(request, runtime)


async def post_messages(request: Request) -> Response:
    runtime = get_runtime(request)
    require_client_key(request, runtime, anthropic=True)
    return await create_message(request, runtime)


async def other_messages_path(request: Request) -> Response:
    """``/v1/messages/count_tokens``, batches: Anthropic's, passed through to it."""
    runtime = get_runtime(request)
    require_client_key(request, runtime, anthropic=True)
    return await pass_through(request, runtime, anthropic=True)


async def any_other_path(request: Request) -> Response:
    runtime = get_runtime(request)
    require_client_key(request, runtime)
    return await pass_through(request, runtime)


def install_openai_routes(app: FastAPI) -> None:
    app.add_route("/v1/chat/completions", post_chat_completions, methods=["POST"])
    app.add_route("/v1/responses", post_responses, methods=["POST"])
    app.add_route("/v1/responses/{response_id}", one_response, methods=_PASS_THROUGH_METHODS)
    app.add_route("/v1/responses/{response_id}/input_items", response_input_items, methods=["GET"])
    app.add_route("/v1/messages", post_messages, methods=["POST"])
    app.add_route("/v1/messages/{path:path}", other_messages_path, methods=_PASS_THROUGH_METHODS)
    app.add_route("/v1/{path:path}", any_other_path, methods=_PASS_THROUGH_METHODS)
