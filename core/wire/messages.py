"""Anthropic's Messages API as stillroom answers it: the ``message`` of a non-streamed
``POST /v1/messages`` (the ``anthropic`` SDK's ``anthropic.types.Message``), the events of
a streamed one (``message_start`` ... ``message_stop``, the SDK's
``RawMessageStreamEvent``) and the error body (``{"type": "error", "error": {...}}``).

Only what a student's answer holds is modelled on the output side: text and ``tool_use``
blocks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from core.wire.base import IfGiven, WireModel

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"]


class MessagesRequest(WireModel):
    """What a client sends to ``POST /v1/messages``: the parameters the canonical view
    reads, with strict scalar types. ``messages`` are checked one by one by the
    conversion, which names the message at fault."""

    model: StrictStr = Field(min_length=1)
    max_tokens: StrictInt = Field(ge=1)
    messages: list[Any] = Field(min_length=1)
    system: StrictStr | list[Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    stop_sequences: list[StrictStr] | None = None
    temperature: StrictFloat | None = Field(default=None, ge=0, le=1)
    top_p: StrictFloat | None = None
    top_k: StrictInt | None = None
    stream: StrictBool | None = None
    metadata: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    mcp_servers: list[Any] | None = None
    container: StrictStr | dict[str, Any] | None = None
    service_tier: StrictStr | None = None
    output_format: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None


class TextBlock(WireModel):
    type: Literal["text"] = "text"
    text: str
    citations: IfGiven[list[dict[str, Any]]] = None


class ToolUseBlock(WireModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = Annotated[TextBlock | ToolUseBlock, Field(discriminator="type")]


class MessageUsage(WireModel):
    input_tokens: int = 0
    cache_creation_input_tokens: int | None = 0
    cache_read_input_tokens: int | None = 0
    output_tokens: int = 0
    service_tier: IfGiven[str] = None


class MessageObject(WireModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock] = Field(default_factory=list)
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: MessageUsage = Field(default_factory=MessageUsage)


# The stream.


class MessageStartEvent(WireModel):
    type: Literal["message_start"] = "message_start"
    message: MessageObject


class ContentBlockStartEvent(WireModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentBlock


class TextDelta(WireModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJsonDelta(WireModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ContentBlockDeltaEvent(WireModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: Annotated[TextDelta | InputJsonDelta, Field(discriminator="type")]


class ContentBlockStopEvent(WireModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class StopDelta(WireModel):
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None


class MessageDeltaUsage(WireModel):
    """Cumulative counts at the end of the message; ``output_tokens`` always."""

    output_tokens: int
    input_tokens: IfGiven[int] = None
    cache_creation_input_tokens: IfGiven[int] = None
    cache_read_input_tokens: IfGiven[int] = None


class MessageDeltaEvent(WireModel):
    type: Literal["message_delta"] = "message_delta"
    delta: StopDelta
    usage: MessageDeltaUsage


class MessageStopEvent(WireModel):
    type: Literal["message_stop"] = "message_stop"


class PingEvent(WireModel):
    type: Literal["ping"] = "ping"


MessageStreamEvent = (
    MessageStartEvent
    | ContentBlockStartEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
    | PingEvent
)


# Errors.

AnthropicErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "timeout_error",
    "overloaded_error",
]


class AnthropicErrorDetail(WireModel):
    type: AnthropicErrorType
    message: str


class AnthropicErrorBody(WireModel):
    """An error answer, and the ``error`` event that ends a stream that failed."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail
    request_id: IfGiven[str] = None
