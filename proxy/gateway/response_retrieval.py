"""``GET``/``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``.

A student's response is answered from the store (``proxy.gateway.stored_responses`` says
who may read it: not one asked with ``store: false``, and only with the key that made
it; anyone else gets OpenAI's 404). The teacher's, and ids stillroom does not hold, pass
through to the teacher, which answers for its own.
"""

from __future__ import annotations

from typing import Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response

from core.dialects.response_items import Order, input_items, page
from core.errors import InvalidRequestError
from core.tables import Exchange
from core.wire import WireModel
from proxy.gateway.passthrough import pass_through
from proxy.gateway.runtime import Runtime
from proxy.gateway.stored_responses import (
    find_response,
    forget_response,
    key_owner,
    readable,
)

_MAX_ITEMS = 100


class DeletedResponse(WireModel):
    """What ``DELETE /v1/responses/{id}`` answers (the example of OpenAI's description)."""

    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


async def get_response(request: Request, runtime: Runtime) -> Response:
    """A student's response from the store; anyone else's from the teacher."""
    exchange = await _students(request, runtime)
    if exchange is None:
        return await pass_through(request, runtime)
    document = _readable(request, exchange)
    return Response(orjson.dumps(document), media_type="application/json")


async def delete_response(request: Request, runtime: Runtime) -> Response:
    """Forget a student's response (the teacher deletes its own)."""
    exchange = await _students(request, runtime)
    if exchange is None:
        return await pass_through(request, runtime)
    _readable(request, exchange)
    await forget_response(runtime, exchange.id)
    deleted = DeletedResponse(id=request.path_params["response_id"]).model_dump_json()
    return Response(deleted, media_type="application/json")


async def list_input_items(request: Request, runtime: Runtime) -> Response:
    """The input items of a student's response, a page at a time, as OpenAI lists them."""
    exchange = await _students(request, runtime)
    if exchange is None:
        return await pass_through(request, runtime)
    _readable(request, exchange)
    query = request.query_params
    items = input_items(exchange.client_request or {}, request.path_params["response_id"])
    listed = page(
        items,
        limit=_limit(query.get("limit")),
        order=_order(query.get("order")),
        after=query.get("after"),
    )
    return Response(listed.model_dump_json(), media_type="application/json")


async def _students(request: Request, runtime: Runtime) -> Exchange | None:
    """The exchange of the student's response the path names, or None (not stillroom's)."""
    exchange = await find_response(runtime, request.path_params["response_id"])
    if exchange is None or exchange.served_by != "student":
        return None
    return exchange


def _readable(request: Request, exchange: Exchange) -> dict[str, object]:
    document = readable(exchange, key_owner(request.headers))
    if document is None:
        response_id = request.path_params["response_id"]
        raise InvalidRequestError(
            f"Response with id '{response_id}' not found.", status_code=404, param="response_id"
        )
    return document


def _limit(given: str | None) -> int:
    if given is None:
        return 20
    if not given.isdigit() or not 1 <= int(given) <= _MAX_ITEMS:
        raise InvalidRequestError(
            f"limit must be an integer from 1 to {_MAX_ITEMS}, not {given!r}", param="limit"
        )
    return int(given)


def _order(given: str | None) -> Order:
    if given is None or given == "desc":
        return "desc"
    if given == "asc":
        return "asc"
    raise InvalidRequestError(f"order must be 'asc' or 'desc', not {given!r}", param="order")
