"""``/v1/responses``: the OpenAI Responses API, routed, answered and recorded like chat.

A request is read into its Chat Completions view (``core.dialects.responses``), by which
its task is named and routed; the student's answer is written back out as a ``response``
object or its stream of events, and the teacher's is relayed as it arrives and recorded
in both forms. What only the teacher can do (``teacher_only``, or a
``previous_response_id`` it holds) goes to it. An audit of a student's answer asks the
OpenAI teacher the chat view (the same question, in the form every scorer reads).

``GET`` and ``DELETE /v1/responses/{id}`` (``proxy.gateway.response_retrieval``) of a
student's response are answered from the store, which keeps it as the client saw it, marked
with a hash of the key that asked (``proxy.gateway.stored_responses``).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from core.dialects import responses
from core.tasks import TASK_HEADER, identify_task
from core.wire import ChatCompletionRequest, ErrorBody
from core.wire.responses import ResponseErrorEvent, named_sse
from proxy.gateway.body import parse_chat_request, parse_json_object, read_body
from proxy.gateway.cancellation import cancelled_on_disconnect
from proxy.gateway.deps import presented_key_hash
from proxy.gateway.headers import teacher_request_headers
from proxy.gateway.recording import ExchangeRecorder
from proxy.gateway.response_chain import Conversation, resolve
from proxy.gateway.routing import (
    WrittenAnswer,
    client_view,
    route,
    submit_audit,
    teacher_response,
    written_response,
)
from proxy.gateway.runtime import Runtime
from proxy.gateway.stored_responses import key_owner, owned, student_response_id
from proxy.gateway.teacher_dialects import (
    AnswerAssembler,
    AnswerViews,
    NamedEventAssembler,
    TeacherDialect,
)
from proxy.gateway.tenancy import request_tenant
from router.bucketing import ROUTE_KEY_HEADER
from router.reasons import TeacherOnly, as_teacher_only
from router.student import StudentReply

RESPONSES_PATH = "/v1/responses"


class ResponsesDialect(TeacherDialect):
    name = "responses"
    path = RESPONSES_PATH

    def read(self, answer: dict[str, Any]) -> AnswerViews:
        response_id = answer.get("id")
        return AnswerViews(
            responses.chat_completion(answer),
            answer,
            response_id if isinstance(response_id, str) else None,
        )

    def is_error(self, body: Any) -> bool:
        return isinstance(body, dict) and isinstance(body.get("error"), dict)

    def error_body(self, status: int, message: str, code: str) -> dict[str, Any]:
        return ErrorBody.of(message, error_type="api_error", code=code).model_dump()

    def assembler(self, *, strip_usage: bool) -> AnswerAssembler:
        inner = responses.ResponseStreamAssembler()
        return NamedEventAssembler(inner, lambda _name, data: inner.feed(data), _error_event)


def _error_event(message: str, code: str, sequence_number: int) -> bytes:
    event = ResponseErrorEvent(sequence_number=sequence_number, code=code, message=message)
    return named_sse("error", event)


RESPONSES = ResponsesDialect()


async def create_response(request: Request, runtime: Runtime) -> Response:
    """Answer one ``POST /v1/responses`` and record the exchange."""
    started = time.perf_counter()
    body = await read_body(request, limit=runtime.settings.max_body_bytes)
    return await cancelled_on_disconnect(
        request, lambda: _answer(request, runtime, body, started), metrics=runtime.metrics
    )


async def _answer(request: Request, runtime: Runtime, raw: bytes, started: float) -> Response:
    client_body = parse_json_object(raw)
    owner = key_owner(request.headers)
    conversation = await resolve(runtime, client_body, owner=owner)
    chat = _chat(conversation.view)
    key_hash = presented_key_hash(request.headers)
    tenant = request_tenant(key_hash, runtime.settings)
    recorder = ExchangeRecorder(
        settings=runtime.settings,
        metrics=runtime.metrics,
        capture=runtime.capture,
        task=identify_task(request.headers.get(TASK_HEADER), chat, tenant=tenant),
        payload=conversation.view,
        stream=client_body.get("stream") is True,
        started=started,
        client_key_hash=key_hash,
        route_key=request.headers.get(ROUTE_KEY_HEADER),
        dialect="responses",
        client_request=client_body,
    )
    headers = teacher_request_headers(
        request.headers.raw, teacher_key=runtime.teacher_key, decoded=True
    )
    outcome = await route(
        request,
        runtime,
        chat,
        conversation.view,
        recorder,
        teacher_only=_teacher_only(conversation),
    )
    if outcome.reply is not None:
        if outcome.audit is not None:
            submit_audit(runtime, outcome.audit, recorder.task, headers)
        written = _written(outcome.reply, chat, client_body, stream=recorder.stream, owner=owner)
        return written_response(recorder, outcome, outcome.reply, written)
    # The teacher gets the client's bytes (decoded), unless the earlier turn it continues
    # was a student's, which only stillroom can write out.
    sent = orjson.dumps(conversation.asked) if conversation.written_out else raw
    return await teacher_response(
        runtime, recorder, outcome, headers, sent, teacher=runtime.teacher, dialect=RESPONSES
    )


def _chat(view: dict[str, Any]) -> ChatCompletionRequest:
    """The chat view, checked; one with no messages (the request names only what OpenAI
    holds: a prompt template, an earlier response) has nothing to check, nor to route."""
    if not view["messages"]:
        return ChatCompletionRequest.model_construct(**view)
    return parse_chat_request(view)


def _teacher_only(conversation: Conversation) -> TeacherOnly | None:
    if conversation.teacher_state:
        return "teacher_state"
    reason = responses.teacher_only(conversation.asked)
    if reason is not None:
        return as_teacher_only(reason)
    return None if conversation.view["messages"] else "teacher_state"


def _written(
    reply: StudentReply,
    chat: ChatCompletionRequest,
    client_body: dict[str, Any],
    *,
    stream: bool,
    owner: str | None,
) -> WrittenAnswer:
    """The student's answer as the ``response`` OpenAI would have given; stored as the
    response of the key that asked (``owner``)."""
    completion = client_view(reply, chat)
    response_id = student_response_id()
    document = responses.response_object(
        completion, client_body, response_id=response_id, created_at=int(time.time())
    )
    events = responses.response_events(document) if stream else None
    return WrittenAnswer(completion, document, response_id, events, owned(document, owner))
