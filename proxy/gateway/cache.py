"""The exact cache: a deterministic request identical to a recent one of the same task and
the same client key is answered with the teacher's stored answer, free, without asking the
teacher again. Chat Completions and Anthropic Messages; not the Responses API, whose
answers the teacher keeps under their ids (``previous_response_id``, retrieval) and a
replay could not.

The store is the cache (no copy in memory), so what retention or deletion removes from it
can never be served again, and every replica sees the same answers. One indexed query
(``ix_exchanges_task_request_hash``) per deterministic request of a task whose window is
on, in a worker thread; a store that is away (or fails the query) is a miss, never an
error. A hit is an exchange too (``served_by="cache"``, priced at zero, never a training
pair), so it is counted in the admin API, the metrics and the savings.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlalchemy.sql import Select
from sqlmodel import col, or_, select
from starlette.responses import Response, StreamingResponse

from core.dialects import messages
from core.request_identity import request_hash
from core.tables import Dialect, Exchange
from core.wire import ChatCompletion, ChatCompletionRequest
from core.wire.messages import MessageObject
from proxy.gateway.recording import EXCHANGE_ID_HEADER, ExchangeRecorder
from proxy.gateway.routing import WrittenAnswer, completion_events
from proxy.gateway.runtime import Runtime

log = logging.getLogger("stillroom.cache")

# Who gave a stored answer the cache may serve: the teacher, first or after the student.
SERVED_FROM = ("teacher", "fallback")
# Windows longer than this (a century) reach as far back as it: timedelta has its limits.
LONGEST_WINDOW = 100 * 365 * 86400.0


@dataclass(frozen=True, slots=True)
class CacheKey:
    """What a cached answer must share with the request it answers."""

    task: str  # the task's key, which names its tenant (core.tenants)
    request_hash: str  # core.request_identity.request_hash of the request's chat view
    client_key_hash: str | None  # None: only keyless requests' answers
    dialect: Dialect  # the API it came on: an answer is replayed in its own shape


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """A teacher's answer as the store keeps it."""

    completion: dict[str, Any]  # the chat.completion view
    document: dict[str, Any] | None  # the answer as its client got it, in another dialect


# Writes a stored answer out afresh for a request that streams (True) or not.
Replay = Callable[[StoredAnswer, bool], WrittenAnswer | None]


def deterministic(chat: ChatCompletionRequest) -> bool:
    """A request whose answer is meant to be the same each time: temperature 0 or a seed,
    and one choice. Any other may rightly get a different answer when asked again."""
    if chat.n not in (None, 1):
        return False
    return chat.temperature == 0 or chat.seed is not None


def find_cached(engine: Engine, key: CacheKey, *, window_seconds: float) -> StoredAnswer | None:
    """The newest ok teacher answer to ``key``'s request stored in the last
    ``window_seconds``, unless an exchange of that same request, it or a later one (a
    cache hit repeating it), was marked bad or suspect: that answer is not given again."""
    since = datetime.now(UTC) - timedelta(seconds=min(window_seconds, LONGEST_WINDOW))
    parameters: dict[str, Any] = {
        "task": key.task,
        "request_hash": key.request_hash,
        "dialect": key.dialect,
        "since": since,
    }
    if key.client_key_hash is not None:
        parameters["client_key_hash"] = key.client_key_hash
    with engine.connect() as connection:
        row = connection.execute(
            _statement(keyless=key.client_key_hash is None), parameters
        ).first()
    if row is None or not isinstance(row[0], dict):
        return None
    return StoredAnswer(row[0], row[1] if isinstance(row[1], dict) else None)


@functools.cache
def _statement(*, keyless: bool) -> Select[tuple[Any, Any]]:
    """The lookup, built once (building it costs more than running it), its values bound.

    Only the newest answer is checked for doubts: one that doubts it was made after every
    older answer too, so none of them would do either."""
    candidate, later = aliased(Exchange), aliased(Exchange)
    newest = (
        select(col(candidate.id))
        .where(
            *_same_request(candidate, keyless=keyless),
            col(candidate.dialect) == sa.bindparam("dialect"),
            col(candidate.origin) == "client",
            col(candidate.status) == "ok",
            col(candidate.http_status) == 200,
            col(candidate.served_by).in_(SERVED_FROM),
            col(candidate.created_at) >= sa.bindparam("since"),
        )
        .order_by(col(candidate.created_at).desc())
        .limit(1)
        .scalar_subquery()
    )
    doubted = (
        select(col(later.id))
        .where(
            *_same_request(later, keyless=keyless),
            col(later.created_at) >= col(Exchange.created_at),
            or_(col(later.feedback) == "bad", col(later.suspect).is_not(None)),
        )
        .exists()
    )
    return sa.select(col(Exchange.response), col(Exchange.client_response)).where(
        col(Exchange.id) == newest, ~doubted
    )


def _same_request(exchange: Any, *, keyless: bool) -> list[Any]:
    """``exchange`` (an alias of the table) asked the bound request, with the bound client
    key (``keyless``: without one)."""
    client_key = col(exchange.client_key_hash)
    return [
        col(exchange.task) == sa.bindparam("task"),
        col(exchange.request_hash) == sa.bindparam("request_hash"),
        client_key.is_(None) if keyless else client_key == sa.bindparam("client_key_hash"),
    ]


async def cached_response(
    runtime: Runtime,
    recorder: ExchangeRecorder,
    chat: ChatCompletionRequest,
    *,
    replay: Replay | None = None,
) -> Response | None:
    """The stored answer to this request, sent and recorded as a cache hit; or None when
    the request is not cacheable or nothing fresh is stored (route it as usual).

    ``replay`` writes a stored answer out in the recorder's dialect (chat's by default)."""
    window = runtime.policies.get(recorder.task.name).cache_seconds
    if window <= 0 or not deterministic(chat) or _store_away(runtime):
        return None
    key = CacheKey(
        recorder.task.name,
        request_hash(recorder.payload),
        recorder.client_key_hash,
        recorder.dialect,
    )
    with recorder.aborted_if_cancelled("cache"):
        stored = await _lookup(runtime.engine, key, window)
    written = (replay or chat_replay(chat))(stored, recorder.stream) if stored else None
    if written is None:
        return None
    recorder.record(
        served_by="cache",
        status="ok",
        http_status=200,
        response=written.completion,
        client_response=None if recorder.dialect == "chat" else written.document,
        response_id=None if recorder.dialect == "chat" else written.response_id,
    )
    return _sent(written, recorder)


async def _lookup(engine: Engine, key: CacheKey, window: float) -> StoredAnswer | None:
    try:
        return await asyncio.to_thread(find_cached, engine, key, window_seconds=window)
    except sa.exc.SQLAlchemyError as exc:  # a miss: the teacher answers as without a cache
        log.warning("cache lookup of task %s failed: %s", key.task, exc)
        return None


def _store_away(runtime: Runtime) -> bool:
    """The capture writer found the store unreachable: a lookup would only wait on it."""
    return runtime.capture is not None and not runtime.capture.store_up


def chat_replay(chat: ChatCompletionRequest) -> Replay:
    """A stored chat.completion under a new id and creation time (so that a client that
    tells answers apart by id sees a new one; the rest, usage included, is the teacher's),
    whole or as the OpenAI stream of it. One that is no chat.completion is not served."""
    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)

    def replay(stored: StoredAnswer, stream: bool) -> WrittenAnswer | None:
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        completion = {**stored.completion, "id": completion_id, "created": int(time.time())}
        try:
            ChatCompletion.model_validate(completion)
        except ValidationError:
            return None
        events = completion_events(completion, include_usage=include_usage) if stream else None
        return WrittenAnswer(completion, completion, completion_id, events)

    return replay


def message_replay(stored: StoredAnswer, stream: bool) -> WrittenAnswer | None:
    """A stored Anthropic ``message`` under a new id, whole or as Anthropic's stream of it.
    One that is no message stillroom can write (a block kind it does not know) is not
    served."""
    if stored.document is None:
        return None
    message_id = f"msg_{uuid.uuid4().hex[:24]}"
    document = {**stored.document, "id": message_id}
    try:
        MessageObject.model_validate(document)
    except ValidationError:
        return None
    events = messages.message_events(document) if stream else None
    completion = {**stored.completion, "id": message_id, "created": int(time.time())}
    return WrittenAnswer(completion, document, message_id, events)


def _sent(written: WrittenAnswer, recorder: ExchangeRecorder) -> Response:
    """The answer as JSON, or as its stream when the request streams."""
    response: Response
    if written.events is None:
        response = Response(orjson.dumps(written.document), media_type="application/json")
    else:
        response = StreamingResponse(iter(written.events), media_type="text/event-stream")
    response.raw_headers = [
        *response.raw_headers,
        (b"x-stillroom-served-by", b"cache"),
        (b"x-stillroom-task", recorder.task.name.encode()),
        (EXCHANGE_ID_HEADER.encode(), recorder.id.encode()),
    ]
    return response
