"""The proxy's side of routing: ask the student when the task's policy says so, answer
with it when it passes its gates, and schedule shadow and audit scoring."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from core.errors import StillroomError
from core.wire import ChatCompletionRequest
from proxy.headers import RawHeaders
from proxy.recording import ExchangeRecorder
from proxy.runtime import Runtime
from proxy.teacher import CHAT_PATH
from router.bucketing import ROUTE_KEY_HEADER, route_key
from router.policy import Policy, StudentRef
from router.route import ask_student, decide
from router.scoring import ScoringJob, TeacherAnswer
from router.student import PromptEmbedding, StudentReply


def sampled(percent: float) -> bool:
    return percent > 0 and random.random() * 100 < percent


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
    teacher_headers: RawHeaders,
) -> Response | None:
    """The student's answer, or None for the teacher to answer (``recorder`` then says
    whether as plain teacher or as fallback, and whether to shadow-score the answer)."""
    policy = runtime.policies.get(recorder.task.name)
    if policy.student is None:
        return None
    metrics = runtime.metrics
    decision = decide(
        policy, chat, payload, route_key(payload, request.headers.get(ROUTE_KEY_HEADER))
    )
    if not decision.to_student:
        metrics.routing.labels(task=policy.task, reason=decision.reason).inc()
        # A live task's teacher-served share outside the cutover is shadowed too: the
        # evidence that earns the next auto-ramp stage, and that drift checks read.
        shadowed = policy.mode == "shadow" or decision.reason == "cutover"
        if shadowed and sampled(policy.shadow_percent):
            recorder.on_answer = _shadow(runtime, policy, payload, recorder.id)
        return None
    prompt, difficult = None, False
    if decision.student.kind == "classifier" or runtime.difficulty is not None:
        prompt, difficult = await asyncio.to_thread(
            _before_student, runtime, decision.student, payload["messages"]
        )
    if difficult:
        metrics.routing.labels(task=policy.task, reason="difficult").inc()
        return None
    outcome = await ask_student(runtime.students, decision, chat, payload, prompt=prompt)
    if outcome.reply is not None:
        metrics.student_seconds.observe(outcome.reply.seconds)
    if outcome.reply is None:
        metrics.routing.labels(task=policy.task, reason=outcome.reason).inc()
        recorder.served_by = "fallback"
        return None
    metrics.routing.labels(task=policy.task, reason="student").inc()
    recorder.served_by = "student"
    recorder.student_version = f"v{decision.student.number}"
    if sampled(policy.audit_percent):
        runtime.scorer.submit(
            ScoringJob(
                "audit",
                policy,
                payload,
                student_reply=outcome.reply,
                ask_teacher=_teacher_asker(runtime, recorder, teacher_headers),
            )
        )
    return student_response(recorder, outcome.reply, chat)


def _before_student(
    runtime: Runtime, student: StudentRef, messages: list[dict[str, Any]]
) -> tuple[PromptEmbedding | None, bool]:
    """Blocking, in one worker thread: the prompt's embedding (a classifier answers from it,
    and the difficulty gate reuses it), and whether the input is too difficult."""
    prompt = runtime.classifiers.embed(messages) if student.kind == "classifier" else None
    difficult = runtime.difficulty is not None and runtime.difficulty.is_difficult(
        student.version_id, messages, vector=prompt.vector if prompt is not None else None
    )
    return prompt, difficult


def _shadow(runtime: Runtime, policy: Policy, payload: dict[str, Any], exchange_id: str) -> Any:
    def submit(completion: dict[str, Any]) -> None:
        text = answer_text(completion)
        if text is not None:
            runtime.scorer.submit(
                ScoringJob("shadow", policy, payload, teacher_text=text, exchange_id=exchange_id)
            )

    return submit


def _teacher_asker(runtime: Runtime, recorder: ExchangeRecorder, headers: RawHeaders) -> Any:
    """Asks the teacher the same question later, with the client's credentials (held in
    memory only), and records that exchange like any other teacher answer."""

    async def ask(payload: dict[str, Any]) -> TeacherAnswer | None:
        audit = ExchangeRecorder(
            settings=runtime.settings,
            metrics=runtime.metrics,
            capture=runtime.capture,
            task=recorder.task,
            payload=payload,
            stream=False,
        )
        body = {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}
        try:
            response = await runtime.teacher.send(
                "POST", CHAT_PATH, headers=headers, content=orjson.dumps(body)
            )
            content = await runtime.teacher.read(response)
        except StillroomError:
            return None
        try:
            completion = orjson.loads(content)
        except orjson.JSONDecodeError:
            return None
        ok = response.status_code == 200 and isinstance(completion, dict)
        audit.record(
            status="ok" if ok else "error",
            http_status=response.status_code,
            response=completion if isinstance(completion, dict) else None,
        )
        text = answer_text(completion) if ok else None
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
        choices.append(
            {
                "index": choice.get("index", 0),
                "message": {
                    "role": "assistant",
                    "content": message.get("content"),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": {"content": logprobs.get("content") or [], "refusal": None}
                if logprobs
                else None,
                "finish_reason": choice.get("finish_reason") or "stop",
            }
        )
    completion: dict[str, Any] = {
        "id": source.get("id") or "chatcmpl-student",
        "object": "chat.completion",
        "created": source.get("created") or int(time.time()),
        "model": chat.model,
        "choices": choices,
    }
    usage = source.get("usage") or {}
    if usage:
        completion["usage"] = {
            key: int(usage.get(key) or 0)
            for key in ("prompt_tokens", "completion_tokens", "total_tokens")
        }
    return completion


def student_response(
    recorder: ExchangeRecorder, reply: StudentReply, chat: ChatCompletionRequest
) -> Response:
    completion = client_view(reply, chat)
    recorder.upstream_seconds = reply.seconds  # the student's time is not the proxy's overhead
    recorder.record(status="ok", http_status=200, response=completion)
    if not chat.stream:
        response = Response(orjson.dumps(completion), media_type="application/json")
    else:
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        events = completion_events(completion, include_usage=include_usage)
        response = StreamingResponse(iter(events), media_type="text/event-stream")
    response.raw_headers = [*response.raw_headers, *recorder.headers()]
    return response


def completion_events(completion: dict[str, Any], *, include_usage: bool) -> list[bytes]:
    """A whole answer as the OpenAI stream of it: role, content, finish, (usage), done."""
    head = {
        "id": completion.get("id", "chatcmpl-student"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", int(time.time())),
        "model": completion["model"],
    }
    if include_usage:
        head["usage"] = None
    events = []

    def event(choices: list[dict[str, Any]], **extra: Any) -> None:
        events.append(b"data: " + orjson.dumps({**head, "choices": choices, **extra}) + b"\n\n")

    for choice in completion.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        event(
            [
                {
                    "index": index,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )
        event(
            [
                {
                    "index": index,
                    "delta": {"content": message.get("content") or ""},
                    "logprobs": choice.get("logprobs"),
                    "finish_reason": None,
                }
            ]
        )
        event(
            [
                {
                    "index": index,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": choice.get("finish_reason") or "stop",
                }
            ]
        )
    if include_usage and completion.get("usage"):
        event([], usage=completion["usage"])
    events.append(b"data: [DONE]\n\n")
    return events
