"""``POST /v1/chat/completions``: routed to the student or the teacher, answered,
recorded.

The router decides (``proxy.routing.route``); this handler carries the outcome out: the
student's reply as it passed its gates, or the teacher's answer relayed as it arrives.
The whole handler runs under :func:`proxy.cancellation.cancelled_on_disconnect`: a client
that goes away cancels whatever is answering it.
"""

from __future__ import annotations

import time

import orjson
from starlette.requests import Request
from starlette.responses import Response

from core.tasks import TASK_HEADER, identify_task
from core.wire import ChatCompletionRequest
from proxy.gateway.body import parse_chat_request, parse_json_object, read_body
from proxy.gateway.cache import cached_response
from proxy.gateway.cancellation import cancelled_on_disconnect
from proxy.gateway.deps import presented_key_hash
from proxy.gateway.headers import RawHeaders, teacher_request_headers
from proxy.gateway.recording import ExchangeRecorder
from proxy.gateway.routing import (
    outcome_headers,
    route,
    shadow_hook,
    student_response,
    submit_audit,
)
from proxy.gateway.runtime import Runtime
from proxy.gateway.teacher_call import call_teacher, relayed
from proxy.gateway.tenancy import request_tenant
from router.bucketing import ROUTE_KEY_HEADER
from router.route import Outcome


async def chat_completions(request: Request, runtime: Runtime) -> Response:
    """Answer one chat completion and record the exchange."""
    started = time.perf_counter()
    body = await read_body(request, limit=runtime.settings.max_body_bytes)
    return await cancelled_on_disconnect(
        request, lambda: _answer(request, runtime, body, started), metrics=runtime.metrics
    )


async def _answer(request: Request, runtime: Runtime, body: bytes, started: float) -> Response:
    payload = parse_json_object(body)
    chat = parse_chat_request(payload)
    key_hash = presented_key_hash(request.headers)
    tenant = request_tenant(key_hash, runtime.settings)
    recorder = ExchangeRecorder(
        settings=runtime.settings,
        metrics=runtime.metrics,
        capture=runtime.capture,
        task=identify_task(request.headers.get(TASK_HEADER), chat, tenant=tenant),
        payload=payload,
        stream=bool(chat.stream),
        started=started,
        client_key_hash=key_hash,
        route_key=request.headers.get(ROUTE_KEY_HEADER),
    )
    cached = await cached_response(runtime, recorder, chat)
    if cached is not None:
        return cached
    # The teacher gets the body decoded (read_body undid any content-encoding), never the
    # client's compressed bytes: the proxy may rewrite it (stream_options below), audits
    # send one rebuilt from the payload with these same headers, and not every
    # OpenAI-compatible teacher takes a compressed request body at all.
    headers = teacher_request_headers(
        request.headers.raw, teacher_key=runtime.teacher_key, decoded=True
    )
    outcome = await route(request, runtime, chat, payload, recorder)
    if outcome.reply is not None:
        if outcome.audit is not None:
            submit_audit(runtime, outcome.audit, recorder.task, headers)
        return student_response(recorder, outcome, outcome.reply, chat)
    return await _teacher(runtime, recorder, outcome, chat, headers, body)


async def _teacher(
    runtime: Runtime,
    recorder: ExchangeRecorder,
    outcome: Outcome,
    chat: ChatCompletionRequest,
    headers: RawHeaders,
    body: bytes,
) -> Response:
    """The teacher's answer, first or as the fallback, passed on as it arrives."""
    strip_usage = (
        bool(chat.stream)
        and runtime.settings.stream_usage
        and not (chat.stream_options and chat.stream_options.include_usage)
    )
    if strip_usage:  # ask for usage (for cost) even when the client does not
        options = recorder.payload.get("stream_options") or {}
        body = orjson.dumps(
            {**recorder.payload, "stream_options": {**options, "include_usage": True}}
        )
    answer = await call_teacher(
        runtime.teacher,
        recorder,
        served_by=outcome.served_by,
        headers=headers,
        body=body,
        stream=bool(chat.stream),
        strip_usage=strip_usage,
        on_answer=shadow_hook(runtime, outcome, recorder.id),
    )
    return relayed(answer, outcome_headers(outcome, recorder.id))
