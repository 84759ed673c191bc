"""Feedback: an app says an answer it got was good or bad, and what the right one was.

``POST /admin/exchanges/{exchange_id}/feedback`` (``stillroom feedback``) takes
``{"rating": "good" | "bad", "correction": ...}`` for the exchange an answer's
``X-Stillroom-Exchange-Id`` names. Rating again replaces the earlier rating (and
correction). What it does, as the answer says:

- a teacher's answer rated bad is never a training pair; with a correction, the
  correction trains in its place (``distiller.curation``). A good rating keeps it one,
  even if a retry made it suspect: the app's word beats the guess.
- a student's answer rated bad counts against the version that gave it
  (``exchanges.version_id``) as a failed audit: a ``shadow_results`` row of kind
  ``feedback`` that drift's window agreement and the auto-ramp read, and that the
  threshold controller leaves out (apps rate the answers they noticed: no random sample,
  so no Clopper-Pearson guarantee holds on them). A good rating is stored only: counting
  the answers an app happened to like would hide the ones it did not look at.

A correction is only for an answer rated bad on an exchange that was answered (status
ok): a string is the answer's text or, for an answer of one tool call, that call's
arguments (JSON) under the same function; an object ``{"content", "tool_calls"}`` is the
assistant message in full. It is stored as a chat.completion (``corrected_response``) and
must itself be a training answer (JSON where the request asks for JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.errors import InvalidRequestError, NotFoundError
from core.metrics import Metrics
from core.profile import prompt_key
from core.tables import Exchange, ShadowResult, StudentVersion
from core.wire import AssistantMessage, ChatCompletion, Choice, FunctionCall, ToolCall
from distiller.curation import answer_of, completion_answer
from proxy.admin.api import require_admin
from proxy.gateway.deps import RuntimeDep
from proxy.gateway.routing import answer_text
from proxy.gateway.runtime import Runtime

Rating = Literal["good", "bad"]
FEEDBACK_KIND = "feedback"  # shadow_results.kind of a student answer rated bad
# How long a feedback on an exchange not yet stored waits for the capture writer.
_STORED_WAIT_SECONDS = 5.0

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


class CorrectedMessage(BaseModel):
    """The right answer as an assistant message: its text, or its tool calls."""

    model_config = ConfigDict(extra="forbid")

    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating: Rating
    correction: str | CorrectedMessage | None = Field(
        default=None,
        description="the right answer (with rating bad): its text, the arguments of its one "
        "tool call, or an assistant message {content, tool_calls}",
    )


@router.post("/exchanges/{exchange_id}/feedback")
async def post_feedback(
    exchange_id: str, feedback: FeedbackRequest, runtime: RuntimeDep
) -> dict[str, Any]:
    """Rate an answer good or bad, with the right answer if it was wrong."""
    try:
        result = await asyncio.to_thread(give_feedback, runtime.engine, exchange_id, feedback)
    except NotFoundError:
        # The answer may have been given a moment ago and still be on its way to the store.
        if not await _stored_meanwhile(runtime):
            raise
        result = await asyncio.to_thread(give_feedback, runtime.engine, exchange_id, feedback)
    _count(runtime.metrics, result)
    return result


async def _stored_meanwhile(runtime: Runtime) -> bool:
    """Wait for this proxy's capture writer to store what it holds; False if it has none."""
    if runtime.capture is None:
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runtime.capture.flush(), _STORED_WAIT_SECONDS)
    return True


def _count(metrics: Metrics, result: dict[str, Any]) -> None:
    metrics.prepare_feedback(result["task"])
    metrics.feedback.labels(
        task=result["task"], rating=result["rating"], served_by=result["served_by"]
    ).inc()


def give_feedback(engine: Engine, exchange_id: str, feedback: FeedbackRequest) -> dict[str, Any]:
    """Store the rating (replacing an earlier one) and what follows from it; the answer
    says what that is."""
    with Session(engine) as session, session.begin():
        exchange = session.exec(
            select(Exchange).where(Exchange.id == exchange_id).with_for_update()
        ).first()
        if exchange is None:
            raise NotFoundError(
                f"unknown exchange {exchange_id!r}: name one by the X-Stillroom-Exchange-Id "
                "of its answer",
                param="exchange_id",
            )
        exchange.corrected_response = _corrected(exchange, feedback)
        exchange.feedback = feedback.rating
        exchange.feedback_at = datetime.now(UTC)
        session.add(exchange)
        session.exec(
            sa.delete(ShadowResult).where(
                col(ShadowResult.exchange_id) == exchange.id,
                col(ShadowResult.kind) == FEEDBACK_KIND,
            )
        )
        version = _answering_version(session, exchange)
        if version is not None and feedback.rating == "bad":
            session.add(_failed_result(exchange, version))
        return _public(exchange, version)


def _corrected(exchange: Exchange, feedback: FeedbackRequest) -> dict[str, Any] | None:
    correction = feedback.correction
    if correction is None:
        return None
    if feedback.rating != "bad":
        raise InvalidRequestError(
            "a correction says the answer was wrong: give it with rating bad", param="correction"
        )
    if exchange.status != "ok":
        raise InvalidRequestError(
            f"exchange {exchange.id!r} has no answer to correct (it ended {exchange.status})",
            param="correction",
        )
    completion = corrected_completion(exchange, correction)
    answer, reason = completion_answer(completion, exchange.request)
    if answer is None:
        raise InvalidRequestError(
            f"the correction is no answer to train on ({reason})", param="correction"
        )
    return completion


def corrected_completion(exchange: Exchange, correction: str | CorrectedMessage) -> dict[str, Any]:
    """The correction as the chat.completion the exchange should have answered."""
    message = _corrected_message(exchange, correction)
    response = exchange.response or {}
    completion = ChatCompletion(
        id=str(response.get("id") or f"chatcmpl-{exchange.id}"),
        created=int(time.time()),
        model=exchange.model or str(response.get("model") or ""),
        choices=[
            Choice(
                index=0,
                message=message,
                finish_reason="tool_calls" if message.tool_calls else "stop",
            )
        ],
    )
    return completion.model_dump(mode="json")


def _corrected_message(exchange: Exchange, correction: str | CorrectedMessage) -> AssistantMessage:
    if isinstance(correction, CorrectedMessage):
        calls = [_checked_call(call, n) for n, call in enumerate(correction.tool_calls or [])]
        if not calls and not (correction.content or "").strip():
            raise InvalidRequestError(
                "the correction says nothing: give its content or tool_calls",
                param="correction",
            )
        return AssistantMessage(content=correction.content, tool_calls=calls or None)
    call = _only_call(exchange)
    if call is None:
        return AssistantMessage(content=correction)
    try:
        orjson.loads(correction)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"the answer was a call of {call.function.name if call.function else 'a tool'}: "
            "give its arguments as JSON",
            param="correction",
        ) from exc
    name = call.function.name if call.function else None
    fixed = call.model_copy(update={"function": FunctionCall(name=name, arguments=correction)})
    return AssistantMessage(content=None, tool_calls=[fixed])


def _only_call(exchange: Exchange) -> ToolCall | None:
    """The answer's tool call, when it answered with exactly one."""
    choices = (exchange.response or {}).get("choices") or []
    message = (choices[0].get("message") or {}) if choices else {}
    calls = message.get("tool_calls") or []
    return ToolCall.model_validate(calls[0]) if len(calls) == 1 else None


def _checked_call(call: ToolCall, number: int) -> ToolCall:
    function = call.function
    if function is None or not function.name or not isinstance(function.arguments, str):
        raise InvalidRequestError(
            f"correction.tool_calls[{number}] needs function.name and function.arguments "
            "(a JSON string)",
            param="correction",
        )
    return call.model_copy(update={"id": call.id or f"call_{number}", "type": "function"})


def _answering_version(session: Session, exchange: Exchange) -> StudentVersion | None:
    """The student version that gave this answer, when a student did and it is known."""
    if exchange.served_by != "student" or exchange.status != "ok" or not exchange.version_id:
        return None
    return session.get(StudentVersion, exchange.version_id)


def _failed_result(exchange: Exchange, version: StudentVersion) -> ShadowResult:
    """A student answer rated bad, as a failed audit of its version (at the time it was
    given, so that it falls in the window of the answers around it)."""
    corrected = exchange.corrected_response
    return ShadowResult(
        id=uuid.uuid4().hex,
        task=exchange.task,
        version_id=version.id,
        kind=FEEDBACK_KIND,
        exchange_id=exchange.id,
        input_text=prompt_key(exchange.request.get("messages") or []),
        agrees=False,
        score=0.0,
        confidence=None,
        student_answer=answer_text(exchange.response or {}) or "",
        teacher_answer=(answer_text(corrected) or "") if corrected is not None else "",
        created_at=exchange.created_at,
    )


def _public(exchange: Exchange, version: StudentVersion | None) -> dict[str, Any]:
    """What the feedback did, for the app and the operator."""
    answer, reason = answer_of(exchange)
    effects: list[str] = []
    if answer is not None and exchange.corrected_response is not None:
        who = "the teacher's" if exchange.served_by != "student" else "the student's"
        effects.append(f"the correction replaces {who} answer in training")
    elif answer is not None:
        effects.append("kept in training")
    elif reason == "feedback_bad":
        effects.append("excluded from training")
    else:
        effects.append(f"no training pair ({reason})")
    if version is not None and exchange.feedback == "bad":
        effects.append(f"counted against v{version.number} as a failed audit")
    elif version is not None:
        effects.append(f"stored; not scored for v{version.number} (only bad ratings count)")
    elif exchange.served_by == "student" and exchange.feedback == "bad":
        effects.append("not counted against a version: the exchange does not name one")
    return {
        "object": "exchange.feedback",
        "exchange_id": exchange.id,
        "task": exchange.task,
        "served_by": exchange.served_by,
        "rating": exchange.feedback,
        "corrected": exchange.corrected_response is not None,
        "feedback_at": exchange.feedback_at.isoformat() if exchange.feedback_at else None,
        "training": {"pair": answer is not None, "reason": reason},
        "version": f"v{version.number}" if version is not None else None,
        "effects": effects,
    }
