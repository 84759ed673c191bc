"""Answers the client may name again by the id it saw (``resp_...``): found in the store.

A student's response lives nowhere else: ``GET /v1/responses/{id}`` (and its
``input_items``) is served from its exchange, ``DELETE`` forgets it, and a later request's
``previous_response_id`` naming it is rebuilt from it (``proxy.gateway.response_chain``).
The teacher's responses are found here too, to tell them apart: those the teacher holds,
and answers for.

Who may read a student's response again: the client that made it. Its key's SHA-256 is
kept in the stored document under :data:`OWNER_FIELD` (never sent back), and a later
request presenting another key (or none) finds nothing, as on OpenAI, where a response
belongs to its project. A response asked for with ``store: false`` is found by nobody:
the exchange is still recorded, like every other, but OpenAI's API would not keep it.

The capture writer batches its inserts, so an answer given a moment ago may not be in the
store yet, here or on another replica. A student's response ids have a form of their own
(:func:`student_response_id`), so a miss on one waits for the store up to a capture flush
interval, as long as another replica may take to write it, before it counts as a miss.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
import uuid
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select
from starlette.datastructures import Headers

from core.tables import Exchange
from proxy.gateway.deps import presented_key_hash
from proxy.gateway.runtime import Runtime

OWNER_FIELD = "_stillroom_owner"
# ``resp_`` and 48 characters, as OpenAI's ids, whose characters are all hex digits: the
# ``sr`` tells a student's apart without a look at the store.
_STUDENT_ID = re.compile(r"resp_sr[0-9a-f]{46}")
# Beyond a flush interval, what another replica may take to write its batch.
_WRITE_SECONDS = 1.0
_POLL_SECONDS = 0.1


def student_response_id() -> str:
    """A fresh id for a response a student gave."""
    return f"resp_sr{uuid.uuid4().hex}{uuid.uuid4().hex[:14]}"


def is_student_response_id(response_id: str) -> bool:
    return _STUDENT_ID.fullmatch(response_id) is not None


def key_owner(headers: Headers) -> str | None:
    """Who presents this request's key: its SHA-256 (hex), or None without a key."""
    return presented_key_hash(headers)


def owned(document: dict[str, Any], owner: str | None) -> dict[str, Any]:
    """``document`` to store, marked as ``owner``'s when a key made it."""
    return document if owner is None else {**document, OWNER_FIELD: owner}


def readable(exchange: Exchange, owner: str | None) -> dict[str, Any] | None:
    """The student's response of ``exchange`` as the client saw it, if this ``owner`` may
    read it: not asked with ``store: false``, not forgotten, and made with the same key."""
    document = exchange.client_response
    if document is None or (exchange.client_request or {}).get("store") is False:
        return None
    stored = document.get(OWNER_FIELD)
    if stored is not None and (
        owner is None or not isinstance(stored, str) or not hmac.compare_digest(stored, owner)
    ):
        return None
    return {key: value for key, value in document.items() if key != OWNER_FIELD}


async def find_response(runtime: Runtime, response_id: str) -> Exchange | None:
    """The client exchange whose answer the client saw as ``response_id``, if stored."""
    found = await asyncio.to_thread(_find, runtime, response_id)
    if found is not None or runtime.capture is None:
        return found
    await runtime.capture.flush()
    found = await asyncio.to_thread(_find, runtime, response_id)
    if found is not None or not is_student_response_id(response_id):
        return found
    # Another replica's, perhaps, still in its capture batch.
    deadline = time.monotonic() + runtime.settings.capture_flush_seconds + _WRITE_SECONDS
    while found is None and time.monotonic() < deadline:
        await asyncio.sleep(_POLL_SECONDS)
        found = await asyncio.to_thread(_find, runtime, response_id)
    return found


async def forget_response(runtime: Runtime, exchange_id: str) -> None:
    """Forget the answer of an exchange as the client saw it: its id no longer names it,
    and its document is gone. The exchange stays, counted, with its chat view."""
    await asyncio.to_thread(_forget, runtime, exchange_id)


def _find(runtime: Runtime, response_id: str) -> Exchange | None:
    query = (
        select(Exchange)
        .where(Exchange.response_id == response_id, Exchange.origin == "client")
        .order_by(col(Exchange.created_at).desc())
        .limit(1)
    )
    try:
        with Session(runtime.engine) as session:
            return session.exec(query).first()
    except sa.exc.OperationalError:  # the store is away: nothing stillroom can vouch for
        return None


def _forget(runtime: Runtime, exchange_id: str) -> None:
    statement = (
        sa.update(Exchange)
        .where(col(Exchange.id) == exchange_id)
        .values(response_id=None, client_response=None)
    )
    with runtime.engine.begin() as connection:
        connection.execute(statement)
