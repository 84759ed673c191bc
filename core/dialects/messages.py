"""Anthropic's Messages API (``POST /v1/messages``) read into Chat Completions and back.

A Messages request becomes the Chat Completions request it amounts to
(:func:`chat_request`); a teacher's ``message`` the ``chat.completion`` it amounts to
(:func:`chat_completion`); a student's ``chat.completion`` the ``message`` Anthropic would
have returned (:func:`message_object`) and its stream of events (:func:`message_events`).
:func:`teacher_only` says when a request needs what only Anthropic has, and
:func:`error_body` writes an error the way Anthropic does. A teacher's stream is put back
together by :class:`MessageStreamAssembler`.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Final

from pydantic import ValidationError

from core.dialects.errors import DialectError
from core.dialects.message_input import (
    MEDIA_BLOCKS,
    SERVER_TOOL_BLOCKS,
    THINKING_BLOCKS,
    chat_messages,
    system_text,
)
from core.dialects.message_stream import MessageStreamAssembler, message_events
from core.wire import ChatCompletion, Choice, Usage
from core.wire.completion import AssistantMessage, FinishReason, PromptTokensDetails
from core.wire.messages import (
    AnthropicErrorBody,
    AnthropicErrorDetail,
    AnthropicErrorType,
    ContentBlock,
    MessageObject,
    MessagesRequest,
    MessageUsage,
    StopReason,
    TextBlock,
    ToolUseBlock,
)
from core.wire.request import FunctionCall, ToolCall

__all__ = [
    "TEACHER_ONLY_REASONS",
    "MessageStreamAssembler",
    "chat_completion",
    "chat_request",
    "error_body",
    "message_events",
    "message_object",
    "teacher_only",
]

TEACHER_ONLY_REASONS: Final = (
    "server_tool",
    "thinking",
    "mcp_servers",
    "container",
    "media_input",
)
"""What :func:`teacher_only` answers: a tool Anthropic runs (web search, code execution,
computer use, bash, text editor: any tool with a ``type`` but ``custom``) or its blocks in
the conversation, extended thinking (or thinking blocks), MCP servers, a code execution
container, or image and document blocks in the input."""


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """The Chat Completions request a Messages request body amounts to: ``system`` as the
    system message, the turns with ``tool_use``/``tool_result`` blocks as tool calls and
    ``tool`` messages, custom tools as function tools, ``tool_choice`` the chat way,
    ``stop_sequences`` as ``stop``, ``metadata.user_id`` as ``user``. Raises
    :class:`DialectError` for a body Anthropic would refuse (no ``max_tokens``, a role
    other than user or assistant, wrong types)."""
    request = _parse(body)
    messages: list[dict[str, Any]] = []
    system = system_text(request.system)
    if system:
        messages.append({"role": "system", "content": system})
    messages += chat_messages(request.messages)
    chat: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
    }
    tools = [_chat_tool(tool, n) for n, tool in enumerate(request.tools or [])]
    if any(tools):
        chat["tools"] = [tool for tool in tools if tool]
    if request.tool_choice is not None:
        chat.update(_chat_tool_choice(request.tool_choice))
    response_format = _chat_response_format(request)
    if response_format is not None:
        chat["response_format"] = response_format
    if request.stop_sequences:
        chat["stop"] = request.stop_sequences
    for name in ("temperature", "top_p", "stream"):
        if getattr(request, name) is not None:
            chat[name] = getattr(request, name)
    if request.stream:
        chat["stream_options"] = {"include_usage": True}  # a Messages stream reports usage
    user = (request.metadata or {}).get("user_id")
    if isinstance(user, str):
        chat["user"] = user
    return chat


def _parse(body: dict[str, Any]) -> MessagesRequest:
    if not isinstance(body, dict):
        raise DialectError("the request body must be a JSON object")
    try:
        return MessagesRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"])
        message = "Field required" if error["type"] == "missing" else error["msg"]
        raise DialectError(f"{param}: {message}", param=param) from None


def _chat_tool(tool: dict[str, Any], number: int) -> dict[str, Any] | None:
    if tool.get("type", "custom") != "custom":
        return None  # a server tool: the teacher's
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise DialectError("tools: each tool needs a 'name'", param=f"tools.{number}.name")
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise DialectError(
            "tools: a custom tool needs an 'input_schema'", param=f"tools.{number}.input_schema"
        )
    function: dict[str, Any] = {"name": name}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    function["parameters"] = schema
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: dict[str, Any]) -> dict[str, Any]:
    kind = choice.get("type")
    chosen: dict[str, Any]
    if kind == "auto":
        chosen = {"tool_choice": "auto"}
    elif kind == "any":
        chosen = {"tool_choice": "required"}
    elif kind == "none":
        chosen = {"tool_choice": "none"}
    elif kind == "tool" and isinstance(choice.get("name"), str):
        chosen = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise DialectError(f"tool_choice: invalid type {kind!r}", param="tool_choice.type")
    if choice.get("disable_parallel_tool_use") is True:
        chosen["parallel_tool_calls"] = False
    return chosen


def _chat_response_format(request: MessagesRequest) -> dict[str, Any] | None:
    fmt = request.output_format or (request.output_config or {}).get("format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt.get("schema")}}


def teacher_only(body: dict[str, Any]) -> str | None:
    """Why only the teacher can answer this request (one of
    :data:`TEACHER_ONLY_REASONS`), or None when a student answering its chat view would
    answer it in full."""
    tools = body.get("tools") or []
    if any(isinstance(tool, dict) and tool.get("type", "custom") != "custom" for tool in tools):
        return "server_tool"
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled"):
        return "thinking"
    if body.get("mcp_servers"):
        return "mcp_servers"
    if body.get("container") is not None:
        return "container"
    kinds = _block_kinds(body.get("messages"))
    if kinds & THINKING_BLOCKS:
        return "thinking"
    if kinds & SERVER_TOOL_BLOCKS:
        return "server_tool"
    if kinds & MEDIA_BLOCKS:
        return "media_input"
    return None


def _block_kinds(messages: object) -> set[str]:
    kinds: set[str] = set()
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and isinstance(block.get("type"), str):
                kinds.add(block["type"])
                nested = block.get("content")
                if block["type"] == "tool_result" and isinstance(nested, list):
                    kinds |= {str(part.get("type")) for part in nested if isinstance(part, dict)}
    return kinds


# A teacher's message read as a chat.completion.

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def chat_completion(message: dict[str, Any]) -> dict[str, Any]:
    """The ``chat.completion`` view of a ``message``: its text blocks joined as
    ``content``, its ``tool_use`` blocks as ``tool_calls`` (the input as a JSON string),
    ``stop_reason`` as ``finish_reason`` (a ``pause_turn``, a turn a server tool left
    unfinished, reads as ``length``: never a whole answer) and its usage in chat's names,
    cache reads and writes counted in the prompt."""
    blocks = message.get("content") or []
    texts = [block.get("text", "") for block in blocks if block.get("type") == "text"]
    calls = [
        ToolCall(
            id=block.get("id"),
            type="function",
            function=FunctionCall(
                name=block.get("name"), arguments=json.dumps(block.get("input") or {})
            ),
        )
        for block in blocks
        if block.get("type") == "tool_use"
    ]
    reply = AssistantMessage(content="".join(texts) if texts or not calls else None, annotations=[])
    if calls:
        reply.tool_calls = calls
    finish = _FINISH.get(str(message.get("stop_reason")), "length")
    completion = ChatCompletion(
        id=str(message.get("id", "")),
        created=int(time.time()),  # a message carries no time of its own
        model=str(message.get("model", "")),
        choices=[Choice(index=0, message=reply, finish_reason=finish)],
    )
    if isinstance(message.get("usage"), dict):
        completion.usage = _chat_usage(MessageUsage.model_validate(message["usage"]))
    return completion.model_dump(mode="json")


def _chat_usage(usage: MessageUsage) -> Usage:
    read = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    chat = Usage.of(usage.input_tokens + read + written, usage.output_tokens)
    chat.prompt_tokens_details = PromptTokensDetails(cached_tokens=read)
    return chat


# A student's chat.completion written as a message.

_STOP: dict[str, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def message_object(
    completion: dict[str, Any], request: dict[str, Any], *, message_id: str
) -> dict[str, Any]:
    """The ``message`` Anthropic would return for the Messages ``request`` had it answered
    what ``completion`` (a ``chat.completion``) says: a text block, a ``tool_use`` block
    (``toolu_...`` ids that follow from ``message_id``) per tool call with its arguments
    parsed, ``stop_reason`` from the finish reason, usage with the cached prompt tokens as
    cache reads. Raises :class:`DialectError` when a tool call's arguments are not a JSON
    object: no Anthropic answer can carry them."""
    answer = ChatCompletion.model_validate(completion)
    choice = answer.choices[0]
    content: list[ContentBlock] = []
    if choice.message.content or not choice.message.tool_calls:
        content.append(TextBlock(text=choice.message.content or ""))
    for number, call in enumerate(choice.message.tool_calls or []):
        function = call.function or FunctionCall()
        content.append(
            ToolUseBlock(
                id=_tool_use_id(message_id, number),
                name=function.name or "",
                input=_tool_input(function.arguments),
            )
        )
    usage = answer.usage or Usage()
    cached = usage.cached_tokens
    message = MessageObject(
        id=message_id,
        model=str(request.get("model", answer.model)),
        content=content,
        stop_reason=_STOP.get(choice.finish_reason, "end_turn"),
        usage=MessageUsage(
            input_tokens=usage.prompt_tokens - cached,
            cache_read_input_tokens=cached,
            cache_creation_input_tokens=0,
            output_tokens=usage.completion_tokens,
            service_tier="standard",
        ),
    )
    return message.model_dump(mode="json")


def _tool_use_id(message_id: str, number: int) -> str:
    return "toolu_" + hashlib.sha256(f"{message_id}:{number}".encode()).hexdigest()[:24]


def _tool_input(arguments: str | None) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise DialectError("a tool call's arguments are not a JSON object")
    return value


# Errors in Anthropic's shape.

_ERROR_TYPES: dict[int, AnthropicErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """An error as Anthropic writes it, ``{"type": "error", "error": {type, message}}``,
    with the error type Anthropic gives that HTTP status (``api_error`` for any other)."""
    detail = AnthropicErrorDetail(type=_ERROR_TYPES.get(status, "api_error"), message=message)
    return AnthropicErrorBody(error=detail).model_dump(mode="json")
