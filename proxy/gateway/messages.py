"""``POST /v1/messages``: Anthropic's Messages API, routed, answered and recorded like chat.

The teacher of this route is Anthropic's API (``STILLROOM_ANTHROPIC_URL``), with the
client's ``x-api-key`` (or the server's ``STILLROOM_ANTHROPIC_API_KEY``) and its
``anthropic-version`` and ``anthropic-beta`` headers. A request is read into its Chat
Completions view (``core.dialects.messages``), by which its task is named and routed; the
student's answer is written back out as a ``message`` or its stream of events, and the
teacher's is relayed as it arrives and recorded in both forms. An audit asks the
Anthropic teacher the client's own request again. Errors on this route, the teacher's and
stillroom's own, are in Anthropic's shape (``proxy.gateway.errors``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from core.dialects import messages
from core.tasks import TASK_HEADER, identify_task
from core.wire import ChatCompletionRequest
from proxy.gateway.body import parse_chat_request, parse_json_object, read_body
from proxy.gateway.cache import cached_response, message_replay
from proxy.gateway.cancellation import cancelled_on_disconnect
from proxy.gateway.deps import presented_key_hash
from proxy.gateway.headers import teacher_request_headers
from proxy.gateway.recording import ExchangeRecorder
from proxy.gateway.routing import (
    AuditAsk,
    WrittenAnswer,
    client_view,
    route,
    submit_audit,
    teacher_response,
    written_response,
)
from proxy.gateway.runtime import Runtime
from proxy.gateway.teacher_dialects import (
    AnswerAssembler,
    AnswerViews,
    NamedEventAssembler,
    TeacherDialect,
)
from proxy.gateway.tenancy import request_tenant
from router.bucketing import ROUTE_KEY_HEADER
from router.reasons import as_teacher_only
from router.student import StudentReply

MESSAGES_PATH = "/v1/messages"


def is_messages_path(path: str) -> bool:
    """Whether ``path`` is one of Anthropic's, answered (and failed) in its shape."""
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


class MessagesDialect(TeacherDialect):
    name = "messages"
    path = MESSAGES_PATH

    def read(self, answer: dict[str, Any]) -> AnswerViews:
        message_id = answer.get("id")
        return AnswerViews(
            messages.chat_completion(answer),
            answer,
            message_id if isinstance(message_id, str) else None,
        )

    def is_error(self, body: Any) -> bool:
        return (
            isinstance(body, dict)
            and body.get("type") == "error"
            and isinstance(body.get("error"), dict)
        )

    def error_body(self, status: int, message: str, code: str) -> dict[str, Any]:
        return messages.error_body(status, message)

    def assembler(self, *, strip_usage: bool) -> AnswerAssembler:
        inner = messages.MessageStreamAssembler()

        def feed(name: str | None, data: dict[str, Any]) -> None:
            inner.feed(name or str(data.get("type")), data)

        return NamedEventAssembler(inner, feed, _error_event)


def _error_event(message: str, code: str, _sequence_number: int) -> bytes:
    """Anthropic's ``error`` event, as it ends a stream that failed (the SDK raises)."""
    return b"event: error\ndata: " + orjson.dumps(messages.error_body(500, message)) + b"\n\n"


MESSAGES = MessagesDialect()


async def create_message(request: Request, runtime: Runtime) -> Response:
    """Answer one ``POST /v1/messages`` and record the exchange."""
    started = time.perf_counter()
    body = await read_body(request, limit=runtime.settings.max_body_bytes)
    return await cancelled_on_disconnect(
        request, lambda: _answer(request, runtime, body, started), metrics=runtime.metrics
    )


async def _answer(request: Request, runtime: Runtime, raw: bytes, started: float) -> Response:
    client_body = parse_json_object(raw)
    view = messages.chat_request(client_body)
    chat = parse_chat_request(view)
    key_hash = presented_key_hash(request.headers, anthropic=True)
    tenant = request_tenant(key_hash, runtime.settings)
    recorder = ExchangeRecorder(
        settings=runtime.settings,
        metrics=runtime.metrics,
        capture=runtime.capture,
        task=identify_task(request.headers.get(TASK_HEADER), chat, tenant=tenant),
        payload=view,
        stream=client_body.get("stream") is True,
        started=started,
        client_key_hash=key_hash,
        route_key=request.headers.get(ROUTE_KEY_HEADER),
        dialect="messages",
        client_request=client_body,
    )
    headers = teacher_request_headers(
        request.headers.raw, teacher_key=runtime.anthropic_key, decoded=True, anthropic=True
    )
    reason = messages.teacher_only(client_body)
    teacher_only = as_teacher_only(reason) if reason is not None else None
    if teacher_only is None:  # what only the teacher can do may change: asked afresh
        cached = await cached_response(runtime, recorder, chat, replay=message_replay)
        if cached is not None:
            return cached
    outcome = await route(request, runtime, chat, view, recorder, teacher_only=teacher_only)
    if outcome.reply is not None:
        if outcome.audit is not None:
            asked = AuditAsk(runtime.anthropic, MESSAGES, client_body)
            submit_audit(runtime, outcome.audit, recorder.task, headers, asked)
        written = _written(outcome.reply, chat, client_body, stream=recorder.stream)
        return written_response(recorder, outcome, outcome.reply, written)
    return await teacher_response(
        runtime, recorder, outcome, headers, raw, teacher=runtime.anthropic, dialect=MESSAGES
    )


def _written(
    reply: StudentReply, chat: ChatCompletionRequest, client_body: dict[str, Any], *, stream: bool
) -> WrittenAnswer:
    """The student's answer as the ``message`` Anthropic would have given."""
    completion = client_view(reply, chat)
    message_id = f"msg_{uuid.uuid4().hex[:24]}"
    document = messages.message_object(completion, client_body, message_id=message_id)
    events = messages.message_events(document) if stream else None
    return WrittenAnswer(completion, document, message_id, events)
