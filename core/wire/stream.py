"""A chat completion as stillroom streams it: ``chat.completion.chunk`` events (OpenAI's
``CreateChatCompletionStreamResponse``, the ``openai`` SDK's ``ChatCompletionChunk``) in
server-sent events framing, ended by ``data: [DONE]``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from core.wire.base import IfGiven, WireModel
from core.wire.completion import ChatCompletion, Choice, ChoiceLogprobs, FinishReason, Usage

SSE_DONE = b"data: [DONE]\n\n"


def sse(event: BaseModel) -> bytes:
    """One server-sent event carrying ``event`` (a chunk, or an error body) as JSON."""
    return b"data: " + event.model_dump_json().encode() + b"\n\n"


class FunctionCallDelta(WireModel):
    name: IfGiven[str] = None
    arguments: IfGiven[str] = None


class ToolCallDelta(WireModel):
    """A piece of a tool call: the first carries id, type and name, later ones arguments."""

    index: int
    id: IfGiven[str] = None
    type: IfGiven[Literal["function"]] = None
    function: IfGiven[FunctionCallDelta] = None


class Delta(WireModel):
    """What a chunk adds to a choice; only the fields given are sent."""

    role: IfGiven[Literal["assistant"]] = None
    content: IfGiven[str] = None
    refusal: IfGiven[str] = None
    tool_calls: IfGiven[list[ToolCallDelta]] = None


class ChunkChoice(WireModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(WireModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    service_tier: IfGiven[str] = None
    system_fingerprint: IfGiven[str] = None
    choices: list[ChunkChoice]
    usage: IfGiven[Usage] = None


_HEAD = {"id", "created", "model", "service_tier", "system_fingerprint"}


def completion_chunks(
    completion: ChatCompletion, *, include_usage: bool
) -> list[ChatCompletionChunk]:
    """A whole answer as OpenAI streams it: for each choice a role chunk, a chunk with its
    content (or tool calls) and logprobs, and a finishing chunk; then, with
    ``include_usage``, the usage-only chunk (every chunk before it says ``"usage": null``)."""
    head: dict[str, Any] = completion.model_dump(include=_HEAD)
    if include_usage:
        head["usage"] = None

    def chunk(choices: list[ChunkChoice], **extra: Any) -> ChatCompletionChunk:
        return ChatCompletionChunk.model_validate({**head, "choices": choices, **extra})

    chunks = []
    for choice in completion.choices:
        chunks += [chunk([part]) for part in _choice_parts(choice)]
    if include_usage and completion.usage is not None:
        chunks.append(chunk([], usage=completion.usage))
    return chunks


def _choice_parts(choice: Choice) -> list[ChunkChoice]:
    message, index = choice.message, choice.index
    calls = message.tool_calls or []
    # A tool-calling answer opens with "content": null, as OpenAI's does.
    has_text = message.content is not None or not calls
    opening = Delta(role="assistant", content="" if has_text else None)
    body = Delta()
    if has_text:
        body.content = message.content or ""
    if calls:
        body.tool_calls = [
            ToolCallDelta(
                index=number,
                id=call.id,
                type="function",
                function=FunctionCallDelta(
                    name=call.function.name if call.function else None,
                    arguments=call.function.arguments if call.function else None,
                ),
            )
            for number, call in enumerate(calls)
        ]
    return [
        ChunkChoice(index=index, delta=opening),
        ChunkChoice(index=index, delta=body, logprobs=choice.logprobs),
        ChunkChoice(index=index, delta=Delta(), finish_reason=choice.finish_reason),
    ]
