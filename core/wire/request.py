"""What a client sends to ``POST /v1/chat/completions``: only what routing and capture
read is declared, everything else is kept as an extra field and passed on."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt

from core.wire.base import WireModel


class FunctionCall(WireModel):
    name: str | None = None
    arguments: str | None = None


class ToolCall(WireModel):
    id: str | None = None
    type: str | None = "function"
    function: FunctionCall | None = None


class ChatMessage(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(WireModel):
    include_usage: StrictBool | None = None


class ChatCompletionRequest(WireModel):
    """Scalar parameters are strict. The body goes to the teacher as the client sent it,
    so a ``"stream": "yes"`` that lax parsing reads as True here would reach the teacher as
    a string, and the proxy would route and record a request the teacher sees otherwise.
    OpenAI refuses such values with a 400 naming the field, and so does the proxy, before
    the teacher is asked. A strict float still takes an int (``"temperature": 1``): JSON
    has one kind of number."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    n: StrictInt | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = None
    user: str | None = None
    # Not read by the proxy; declared only so that a wrong type is refused, not passed on.
    temperature: StrictFloat | None = None
    top_p: StrictFloat | None = None
    presence_penalty: StrictFloat | None = None
    frequency_penalty: StrictFloat | None = None
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    seed: StrictInt | None = None
    parallel_tool_calls: StrictBool | None = None

    def system_prompt(self) -> str:
        """The text of every system and developer message, in order."""
        return "\n".join(
            message_text(message)
            for message in self.messages
            if message.role in ("system", "developer")
        )


def message_text(message: ChatMessage) -> str:
    """A message's text, whether its content is a string or a list of parts."""
    if isinstance(message.content, str):
        return message.content
    if not message.content:
        return ""
    return "".join(
        str(part.get("text", "")) for part in message.content if part.get("type") == "text"
    )
