"""A chat completion as stillroom answers it: the body of a non-streamed
``POST /v1/chat/completions``, shaped as OpenAI's ``CreateChatCompletionResponse`` (the
``openai`` SDK's ``ChatCompletion``)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, get_args

from pydantic import Field

from core.wire.base import IfGiven, WireModel
from core.wire.request import ToolCall

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
FINISH_REASONS: tuple[FinishReason, ...] = get_args(FinishReason)


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class TopLogprob(WireModel):
    """One alternative at a position of the answer."""

    token: str
    logprob: float
    bytes: list[int] | None = None

    @classmethod
    def of(cls, token: str, logprob: float) -> TopLogprob:
        return cls(token=token, logprob=logprob, bytes=list(token.encode()))


class TokenLogprob(WireModel):
    """One token of the answer, with the likeliest alternatives when they were asked for."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)

    @classmethod
    def of(cls, token: str, logprob: float, top: list[TopLogprob] | None = None) -> TokenLogprob:
        return cls(token=token, logprob=logprob, bytes=list(token.encode()), top_logprobs=top or [])


class ChoiceLogprobs(WireModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class PromptTokensDetails(WireModel):
    cached_tokens: IfGiven[int] = None
    audio_tokens: IfGiven[int] = None


class CompletionTokensDetails(WireModel):
    reasoning_tokens: IfGiven[int] = None
    audio_tokens: IfGiven[int] = None
    accepted_prediction_tokens: IfGiven[int] = None
    rejected_prediction_tokens: IfGiven[int] = None


class Usage(WireModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: IfGiven[PromptTokensDetails] = None
    completion_tokens_details: IfGiven[CompletionTokensDetails] = None

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )

    @property
    def cached_tokens(self) -> int:
        details = self.prompt_tokens_details
        return (details.cached_tokens or 0) if details else 0


class AssistantMessage(WireModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    annotations: IfGiven[list[dict[str, Any]]] = None
    tool_calls: IfGiven[list[ToolCall]] = None


class Choice(WireModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(WireModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: IfGiven[Usage] = None
    service_tier: IfGiven[str] = None
    system_fingerprint: IfGiven[str] = None

    @classmethod
    def from_text(
        cls,
        text: str,
        *,
        model: str,
        finish_reason: FinishReason = "stop",
        logprobs: ChoiceLogprobs | None = None,
        usage: Usage | None = None,
        id: str | None = None,
        created: int | None = None,
    ) -> ChatCompletion:
        """A one-choice answer of ``text`` (an id and the current time unless given)."""
        message = AssistantMessage(content=text, annotations=[])
        completion = cls(
            id=id or new_completion_id(),
            created=int(time.time()) if created is None else created,
            model=model,
            choices=[
                Choice(index=0, message=message, logprobs=logprobs, finish_reason=finish_reason)
            ],
        )
        if usage is not None:
            completion.usage = usage
        return completion
