"""The proxy's side of routing: ask the router for a request's outcome, and carry out
the scoring it orders (shadow and audit); the student's answer as the client gets it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from core.errors import StillroomError
from core.tasks import TaskRef
from core.wire import (
    FINISH_REASONS,
    SSE_DONE,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    Usage,
    completion_chunks,
    sse,
)
from proxy.gateway.headers import RawHeaders
from proxy.gateway.recording import ExchangeRecorder
from proxy.gateway.runtime import Runtime
from proxy.gateway.teacher_call import call_teacher
from router.bucketing import ROUTE_KEY_HEADER
from router.route import Outcome
from router.scoring import AskTeacher, AuditScoring, TeacherAnswer
from router.student import StudentReply


def answer_text(completion: dict[str, Any]) -> str | None:
    choices = completion.get("choices") or []
    message = (choices[0].get("message") or {}) if choices else {}
    content = message.get("content")
    return content if isinstance(content, str) else None


async def route(
    request: Request,
    runtime: Runtime,
    chat: ChatCompletionRequest,
    payload: dict[str, Any],
    recorder: ExchangeRecorder,
) -> Outcome:
    """The router's outcome for this request. The router awaits only the student and the
    work done for it: a client that leaves meanwhile is recorded as leaving the student."""
    policy = runtime.policies.get(recorder.task.name)
    with recorder.aborted_if_cancelled("student"):
        return await runtime.router.route(
            policy, chat, payload, route_key_header=request.headers.get(ROUTE_KEY_HEADER)
        )


def outcome_headers(outcome: Outcome) -> RawHeaders:
    """``X-Stillroom-*`` response headers: who served, the task, the student version."""
    own = [
        (b"x-stillroom-served-by", outcome.served_by.encode()),
        (b"x-stillroom-task", outcome.task.encode()),
    ]
    if outcome.student_version is not None:
        own.append((b"x-stillroom-student-version", outcome.student_version.encode()))
    return own


def shadow_hook(
    runtime: Runtime, outcome: Outcome, exchange_id: str
) -> Callable[[dict[str, Any]], None] | None:
    """What the teacher's complete answer is handed to when the outcome shadows it."""
    shadow = outcome.shadow
    if shadow is None:
        return None

    def submit(completion: dict[str, Any]) -> None:
        text = answer_text(completion)
        if text is not None:
            runtime.scorer.submit(shadow.job(teacher_text=text, exchange_id=exchange_id))

    return submit


def submit_audit(runtime: Runtime, audit: AuditScoring, task: TaskRef, headers: RawHeaders) -> None:
    runtime.scorer.submit(audit.job(_teacher_asker(runtime, task, headers)))


def _teacher_asker(runtime: Runtime, task: TaskRef, headers: RawHeaders) -> AskTeacher:
    """Asks the teacher the same question later, with the client's credentials (held in
    memory only), and records that call as an audit: an exchange, not a request."""

    async def ask(payload: dict[str, Any]) -> TeacherAnswer | None:
        audit = ExchangeRecorder(
            settings=runtime.settings,
            metrics=runtime.metrics,
            capture=runtime.capture,
            task=task,
            payload=payload,
            stream=False,
            origin="audit",
        )
        body = {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}
        try:
            answer = await call_teacher(
                runtime.teacher,
                audit,
                served_by="teacher",
                headers=headers,
                body=orjson.dumps(body),
            )
        except StillroomError:
            return None
        text = answer_text(answer.completion) if answer.completion is not None else None
        return TeacherAnswer(text, audit.id) if text is not None else None

    return ask


def client_view(reply: StudentReply, chat: ChatCompletionRequest) -> dict[str, Any]:
    """The student's answer in OpenAI's shape, as the client asked for it: under the model
    name it asked for, with log-probabilities only if it asked for them, and without the
    student server's own extra fields."""
    source = reply.completion
    choices = []
    for choice in source.get("choices") or []:
        message = choice.get("message") or {}
        logprobs = choice.get("logprobs") if chat.logprobs else None
        finish = choice.get("finish_reason")
        choices.append(
            Choice(
                index=choice.get("index", 0),
                message=AssistantMessage(content=message.get("content"), annotations=[]),
                logprobs=ChoiceLogprobs(content=logprobs.get("content") or [])
                if logprobs
                else None,
                # A student server's own reasons (vLLM's "abort") are not OpenAI's.
                finish_reason=finish if finish in FINISH_REASONS else "stop",
            )
        )
    completion = ChatCompletion(
        id=source.get("id") or "chatcmpl-student",
        created=source.get("created") or int(time.time()),
        model=chat.model,
        choices=choices,
    )
    usage = source.get("usage") or {}
    if usage:
        completion.usage = Usage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            total_tokens=int(usage.get("total_tokens") or 0),
        )
    return completion.model_dump(mode="json")


def student_response(
    recorder: ExchangeRecorder, outcome: Outcome, reply: StudentReply, chat: ChatCompletionRequest
) -> Response:
    completion = client_view(reply, chat)
    recorder.record(
        served_by=outcome.served_by,
        status="ok",
        http_status=200,
        response=completion,
        upstream_seconds=reply.seconds,  # the student's time is not the proxy's overhead
    )
    if not chat.stream:
        response = Response(orjson.dumps(completion), media_type="application/json")
    else:
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        events = completion_events(completion, include_usage=include_usage)
        response = StreamingResponse(iter(events), media_type="text/event-stream")
    response.raw_headers = [*response.raw_headers, *outcome_headers(outcome)]
    return response


def completion_events(completion: dict[str, Any], *, include_usage: bool) -> list[bytes]:
    """A whole answer as the OpenAI stream of it: role, content, finish, (usage), done."""
    whole = ChatCompletion.model_validate(completion)
    chunks = completion_chunks(whole, include_usage=include_usage)
    return [*(sse(chunk) for chunk in chunks), SSE_DONE]
