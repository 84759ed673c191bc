"""What a client sends to ``POST /v1/chat/completions``: only what routing and capture
read is declared, everything else is kept as an extra field and passed on."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

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
    include_usage: bool | None = None


class ChatCompletionRequest(WireModel):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    user: str | None = None

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
