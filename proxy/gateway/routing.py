"""The proxy's side of routing: ask the router for a request's outcome, and carry out
the scoring it orders (shadow and audit); the student's answer as the client gets it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
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
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    Delta,
    FunctionCallDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    completion_chunks,
    sse,
)
from proxy.gateway.headers import RawHeaders
from proxy.gateway.recording import EXCHANGE_ID_HEADER, ExchangeRecorder
from proxy.gateway.runtime import Runtime
from proxy.gateway.teacher import Teacher
from proxy.gateway.teacher_call import call_teacher, relayed
from proxy.gateway.teacher_dialects import CHAT, TeacherDialect
from router.bucketing import ROUTE_KEY_HEADER
from router.reasons import NotAsked, TeacherOnly
from router.route import Outcome, count
from router.scoring import AskTeacher, AuditScoring, TeacherAnswer
from router.student import StudentReply


def answer_text(completion: dict[str, Any]) -> str | None:
    """The answer's text, or the arguments of its one tool call (what a student that
    answers with calls is scored on)."""
    choices = completion.get("choices") or []
    message = (choices[0].get("message") or {}) if choices else {}
    content = message.get("content")
    calls = message.get("tool_calls") or []
    if not isinstance(content, str) and len(calls) == 1:
        arguments = (calls[0].get("function") or {}).get("arguments")
        return arguments if isinstance(arguments, str) else None
    return content if isinstance(content, str) else None


async def route(
    request: Request,
    runtime: Runtime,
    chat: ChatCompletionRequest,
    payload: dict[str, Any],
    recorder: ExchangeRecorder,
    *,
    teacher_only: TeacherOnly | None = None,
) -> Outcome:
    """The router's outcome for this request. The router awaits only the student and the
    work done for it: a client that leaves meanwhile is recorded as leaving the student.

    ``teacher_only``: why only the teacher can answer this request of another dialect
    (``payload`` is its chat view, which cannot say it); the student is not asked."""
    policy = runtime.policies.get(recorder.task.name)
    if teacher_only is not None:
        reason: NotAsked = teacher_only
        if policy.student is None:
            reason = "no_student"
        elif policy.mode == "off":
            reason = "off"
        outcome = Outcome(policy.task, "teacher", reason)
        count(runtime.metrics, outcome)
        return outcome
    with recorder.aborted_if_cancelled("student"):
        return await runtime.router.route(
            policy, chat, payload, route_key_header=request.headers.get(ROUTE_KEY_HEADER)
        )


def outcome_headers(outcome: Outcome, exchange_id: str | None = None) -> RawHeaders:
    """``X-Stillroom-*`` response headers: who served, the task, the student version, and
    the exchange the answer was recorded as (what feedback names)."""
    own = [
        (b"x-stillroom-served-by", outcome.served_by.encode()),
        (b"x-stillroom-task", outcome.task.encode()),
    ]
    if outcome.student_version is not None:
        own.append((b"x-stillroom-student-version", outcome.student_version.encode()))
    if exchange_id is not None:
        own.append((EXCHANGE_ID_HEADER.encode(), exchange_id.encode()))
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


@dataclass(frozen=True, slots=True)
class AuditAsk:
    """How an audit asks the teacher in a dialect other than chat: ``client_request``,
    the client's own request, again (not its chat view), in ``dialect``."""

    teacher: Teacher
    dialect: TeacherDialect
    client_request: dict[str, Any]


def submit_audit(
    runtime: Runtime,
    audit: AuditScoring,
    task: TaskRef,
    headers: RawHeaders,
    asked: AuditAsk | None = None,
) -> None:
    """Score the student's answer against the teacher's, asked later: in chat form on the
    OpenAI teacher, or as ``asked`` says."""
    runtime.scorer.submit(audit.job(_teacher_asker(runtime, task, headers, asked)))


def _teacher_asker(
    runtime: Runtime, task: TaskRef, headers: RawHeaders, asked: AuditAsk | None
) -> AskTeacher:
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
        dialect: TeacherDialect = CHAT
        sent, teacher = payload, runtime.teacher
        if asked is not None:
            sent, teacher, dialect = asked.client_request, asked.teacher, asked.dialect
            audit.dialect, audit.client_request = dialect.name, sent
        body = {k: v for k, v in sent.items() if k not in ("stream", "stream_options")}
        try:
            answer = await call_teacher(
                teacher,
                audit,
                served_by="teacher",
                headers=headers,
                body=orjson.dumps(body),
                dialect=dialect,
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
                message=_message(message),
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


def _message(message: dict[str, Any]) -> AssistantMessage:
    """A student's message: its content, and its tool calls when it made any."""
    built = AssistantMessage(content=message.get("content"), annotations=[])
    if message.get("tool_calls"):
        built.tool_calls = [ToolCall.model_validate(call) for call in message["tool_calls"]]
    return built


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
        version_id=outcome.student_version_id,
    )
    if not chat.stream:
        response = Response(orjson.dumps(completion), media_type="application/json")
    else:
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        events = completion_events(completion, include_usage=include_usage)
        response = StreamingResponse(iter(events), media_type="text/event-stream")
    response.raw_headers = [*response.raw_headers, *outcome_headers(outcome, recorder.id)]
    return response


@dataclass(frozen=True, slots=True)
class WrittenAnswer:
    """A student's answer written in the client's dialect (not chat)."""

    completion: dict[str, Any]  # its chat.completion view, as recorded
    document: dict[str, Any]  # the answer as the client gets it whole
    response_id: str  # the id the client sees
    events: list[bytes] | None  # the stream of it, when the client asked for one
    # The document as stored, where it keeps more than the client sees (its owner's key).
    stored: dict[str, Any] | None = None


def written_response(
    recorder: ExchangeRecorder, outcome: Outcome, reply: StudentReply, written: WrittenAnswer
) -> Response:
    """The student's answer in another dialect than chat, recorded and sent."""
    recorder.record(
        served_by=outcome.served_by,
        status="ok",
        http_status=200,
        response=written.completion,
        upstream_seconds=reply.seconds,  # the student's time is not the proxy's overhead
        version_id=outcome.student_version_id,
        client_response=written.stored if written.stored is not None else written.document,
        response_id=written.response_id,
    )
    response: Response
    if written.events is None:
        response = Response(orjson.dumps(written.document), media_type="application/json")
    else:
        response = StreamingResponse(iter(written.events), media_type="text/event-stream")
    response.raw_headers = [*response.raw_headers, *outcome_headers(outcome, recorder.id)]
    return response


async def teacher_response(
    runtime: Runtime,
    recorder: ExchangeRecorder,
    outcome: Outcome,
    headers: RawHeaders,
    body: bytes,
    *,
    teacher: Teacher,
    dialect: TeacherDialect,
) -> Response:
    """The teacher's answer to a request of another dialect than chat, first or as the
    fallback, passed on as it arrives (and its complete answer shadowed, if ordered)."""
    answer = await call_teacher(
        teacher,
        recorder,
        served_by=outcome.served_by,
        headers=headers,
        body=body,
        stream=recorder.stream,
        on_answer=shadow_hook(runtime, outcome, recorder.id),
        dialect=dialect,
    )
    return relayed(answer, outcome_headers(outcome, recorder.id))


def completion_events(completion: dict[str, Any], *, include_usage: bool) -> list[bytes]:
    """A whole answer as the OpenAI stream of it: role, content, finish, (usage), done."""
    whole = ChatCompletion.model_validate(completion)
    chunks = completion_chunks(whole, include_usage=include_usage)
    if any(choice.message.tool_calls for choice in whole.choices):
        chunks = _with_argument_deltas(chunks)
    return [*(sse(chunk) for chunk in chunks), SSE_DONE]


ARGUMENT_PIECE = 16  # characters of a call's arguments per streamed delta


def _with_argument_deltas(chunks: list[ChatCompletionChunk]) -> list[ChatCompletionChunk]:
    """Tool calls streamed as OpenAI streams them: a delta opening each call (id, type,
    name, empty arguments), then its arguments a piece at a time."""
    streamed: list[ChatCompletionChunk] = []
    for chunk in chunks:
        calls = [d for c in chunk.choices for d in (c.delta.tool_calls or [])]
        if len(chunk.choices) != 1 or not calls:
            streamed.append(chunk)
            continue
        choice = chunk.choices[0]
        for call in calls:
            function = call.function or FunctionCallDelta()
            arguments = function.arguments or ""
            opening = call.model_copy(
                update={"function": FunctionCallDelta(name=function.name, arguments="")}
            )
            pieces = [opening] + [
                ToolCallDelta(
                    index=call.index,
                    function=FunctionCallDelta(arguments=arguments[at : at + ARGUMENT_PIECE]),
                )
                for at in range(0, len(arguments), ARGUMENT_PIECE)
            ]
            for piece in pieces:
                delta = Delta(tool_calls=[piece])
                streamed.append(
                    chunk.model_copy(
                        update={"choices": [choice.model_copy(update={"delta": delta})]}
                    )
                )
    return streamed
