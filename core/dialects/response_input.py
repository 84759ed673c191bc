"""A Responses API request's parts read the Chat Completions way: its ``input`` items as
chat messages, its tools, tool choice, text format and parameters as chat's.

Messages keep their role; their ``input_text``/``output_text`` parts become text (a string
when there is one text part, chat content parts otherwise), images, files and audio the
chat parts of the same meaning. ``function_call`` items become the ``tool_calls`` of an
assistant message (consecutive calls, and a call right after the assistant's text, share
one message, as chat writes parallel calls), ``function_call_output`` items ``tool``
messages. Items of built-in tools and references to stored items have no chat form and
are left out (``teacher_only`` sends such requests to the teacher).
"""

from __future__ import annotations

from typing import Any

from core.dialects.errors import DialectError
from core.wire.responses import ResponsesRequest

LOGPROBS_INCLUDE = "message.output_text.logprobs"
_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TEXT_PARTS = frozenset({"input_text", "output_text"})


def chat_messages(items: list[Any]) -> list[dict[str, Any]]:
    """The chat messages the ``input`` items amount to; raises :class:`DialectError` naming
    the first item that is not a valid input item."""
    messages: list[dict[str, Any]] = []
    for number, item in enumerate(items):
        where = f"input[{number}]"
        if not isinstance(item, dict):
            raise DialectError("an input item must be an object", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            _add_call(messages, item, where)
        elif kind == "function_call_output":
            messages.append(_call_output(item, where))
        elif not isinstance(kind, str):
            raise DialectError("an input item's 'type' must be a string", param=f"{where}.type")
    return messages


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise DialectError(
            f"invalid role {role!r}: expected user, assistant, system or developer",
            param=f"{where}.role",
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise DialectError("a message's content must be a string or a list", param=where)
    parts = [_part(part, f"{where}.content[{n}]") for n, part in enumerate(content)]
    if role == "user":
        texts = [part["text"] for part in parts if part["type"] == "text"]
        if len(parts) == 1 and len(texts) == 1:
            return {"role": role, "content": texts[0]}
        return {"role": role, "content": parts}
    # System, developer and assistant turns are text in chat.
    message: dict[str, Any] = {
        "role": role,
        "content": "".join(part["text"] for part in parts if part["type"] == "text"),
    }
    refusals = [part["refusal"] for part in parts if part["type"] == "refusal"]
    if role == "assistant" and refusals:
        message["refusal"] = "".join(refusals)
    return message


def _part(part: Any, where: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise DialectError("a content part must be an object", param=where)
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        text = part.get("text")
        if not isinstance(text, str):
            raise DialectError(f"a {kind} part needs a 'text' string", param=f"{where}.text")
        return {"type": "text", "text": text}
    if kind == "refusal":
        return {"type": "refusal", "refusal": str(part.get("refusal", ""))}
    if kind == "input_image":
        image: dict[str, Any] = {"url": part.get("image_url") or part.get("file_id") or ""}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        keys = ("file_data", "file_id", "filename", "file_url")
        return {"type": "file", "file": {key: part[key] for key in keys if key in part}}
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": part.get("input_audio", {})}
    raise DialectError(f"unknown content part type {kind!r}", param=f"{where}.type")


def _add_call(messages: list[dict[str, Any]], item: dict[str, Any], where: str) -> None:
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise DialectError(f"a function_call needs a '{key}' string", param=f"{where}.{key}")
    call = {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": item["arguments"]},
    }
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
        if last.get("content") == "":
            last["content"] = None
        return
    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _call_output(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str):
        raise DialectError("a function_call_output needs a 'call_id'", param=f"{where}.call_id")
    output = item.get("output")
    if isinstance(output, str):
        return {"role": "tool", "tool_call_id": call_id, "content": output}
    if not isinstance(output, list):
        raise DialectError(
            "a function_call_output's output must be a string or a list", param=f"{where}.output"
        )
    parts = [_part(part, f"{where}.output[{n}]") for n, part in enumerate(output)]
    return {"role": "tool", "tool_call_id": call_id, "content": parts}


def chat_tool(tool: dict[str, Any], number: int) -> dict[str, Any] | None:
    """A function tool as chat writes it; None for a built-in tool, which chat lacks."""
    if tool.get("type") != "function":
        if not isinstance(tool.get("type"), str):
            raise DialectError("a tool needs a 'type'", param=f"tools[{number}].type")
        return None
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise DialectError("a function tool needs a 'name'", param=f"tools[{number}].name")
    function = {"name": name}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """``tool_choice`` as chat writes it; None when it names a built-in tool."""
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise DialectError(f"invalid tool_choice {choice!r}", param="tool_choice")
        return choice
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    if choice.get("type") == "allowed_tools":
        tools = [
            {"type": "function", "function": {"name": tool.get("name")}}
            for tool in choice.get("tools") or []
            if isinstance(tool, dict) and tool.get("type") == "function"
        ]
        allowed = {"mode": choice.get("mode"), "tools": tools}
        return {"type": "allowed_tools", "allowed_tools": allowed}
    return None  # a built-in tool: the teacher's


def chat_response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format``; None for plain text (chat's default)."""
    fmt = (text or {}).get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        keys = ("name", "description", "schema", "strict")
        schema = {key: fmt[key] for key in keys if key in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise DialectError(f"invalid text.format type {fmt['type']!r}", param="text.format.type")


def copy_parameters(request: ResponsesRequest, chat: dict[str, Any]) -> None:
    """Write the request's sampling and bookkeeping parameters into ``chat`` by chat's
    names (``max_output_tokens`` as ``max_tokens``, ``reasoning.effort`` as
    ``reasoning_effort``, ``text.verbosity`` as ``verbosity``)."""
    given = request.model_dump(exclude_unset=True)
    for name in (
        "temperature",
        "top_p",
        "stream",
        "user",
        "metadata",
        "parallel_tool_calls",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
    ):
        if given.get(name) is not None:
            chat[name] = given[name]
    if request.max_output_tokens is not None:
        chat["max_tokens"] = request.max_output_tokens
    if request.stream:
        # A Responses stream always reports usage.
        chat["stream_options"] = {"include_usage": True}
    if request.top_logprobs or LOGPROBS_INCLUDE in (request.include or []):
        chat["logprobs"] = True
        if request.top_logprobs:
            chat["top_logprobs"] = request.top_logprobs
    effort = (request.reasoning or {}).get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort
    verbosity = (request.text or {}).get("verbosity")
    if verbosity is not None:
        chat["verbosity"] = verbosity
