"""Anthropic ``messages`` (and ``system``) read as chat messages.

A user turn's ``text`` blocks become its text (a string when there is one block, chat
content parts otherwise) and ``image`` blocks ``image_url`` parts; its ``tool_result``
blocks become ``tool`` messages ahead of it, as chat puts each result in a message of its
own. An assistant turn's ``text`` blocks become its content and its ``tool_use`` blocks
its ``tool_calls`` (the input as a JSON string). Blocks with no chat form (thinking,
server tools' calls and results, documents) are left out; ``teacher_only`` sends such
requests to the teacher.
"""

from __future__ import annotations

import json
from typing import Any

from core.dialects.errors import DialectError

# Blocks chat has no form of; their requests are the teacher's (see ``teacher_only``).
SERVER_TOOL_BLOCKS = frozenset(
    {
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    }
)
THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})
MEDIA_BLOCKS = frozenset({"image", "document", "search_result"})
_LEFT_OUT = SERVER_TOOL_BLOCKS | THINKING_BLOCKS | (MEDIA_BLOCKS - {"image"})


def system_text(system: str | list[Any] | None) -> str:
    """The system prompt: the string, or its text blocks joined by newlines."""
    if system is None or isinstance(system, str):
        return system or ""
    texts = []
    for number, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise DialectError("system blocks must be text blocks", param=f"system.{number}")
        texts.append(_text(block, f"system.{number}"))
    return "\n".join(texts)


def chat_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """The chat messages the Messages turns amount to; raises :class:`DialectError`
    naming the first turn or block that breaks the Messages rules."""
    out: list[dict[str, Any]] = []
    for number, message in enumerate(messages):
        where = f"messages.{number}"
        if not isinstance(message, dict):
            raise DialectError("each message must be an object", param=where)
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise DialectError(
                f"messages: unexpected role {role!r}: roles must be 'user' or 'assistant'"
                + (
                    " (the system prompt goes in the top-level 'system')"
                    if role == "system"
                    else ""
                ),
                param=f"{where}.role",
            )
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise DialectError("content must be a string or a list of blocks", param=where)
        blocks = [_block(block, f"{where}.content.{n}") for n, block in enumerate(content)]
        out += _user_turn(blocks) if role == "user" else [_assistant_turn(blocks)]
    return out


def _block(block: Any, where: str) -> dict[str, Any]:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise DialectError("each content block must be an object with a 'type'", param=where)
    kind = block["type"]
    if kind == "text":
        _text(block, where)
    elif kind == "tool_use":
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise DialectError("a tool_use block needs an 'id' and a 'name'", param=where)
        if not isinstance(block.get("input"), dict):
            raise DialectError("a tool_use block's input must be an object", param=where)
    elif kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            raise DialectError("a tool_result block needs a 'tool_use_id'", param=where)
    elif kind != "image" and kind not in _LEFT_OUT:
        raise DialectError(f"unknown content block type {kind!r}", param=f"{where}.type")
    return block


def _text(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise DialectError("a text block needs a 'text' string", param=f"{where}.text")
    return text


def _user_turn(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = [_tool_message(block) for block in blocks if block["type"] == "tool_result"]
    parts = [_chat_part(block) for block in blocks if block["type"] in ("text", "image")]
    if not parts:
        return results
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*results, {"role": "user", "content": parts[0]["text"]}]
    return [*results, {"role": "user", "content": parts}]


def _chat_part(block: dict[str, Any]) -> dict[str, Any]:
    if block["type"] == "text":
        return {"type": "text", "text": block["text"]}
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    else:
        url = str(source.get("url") or source.get("file_id") or "")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_message(block: dict[str, Any]) -> dict[str, Any]:
    content = block.get("content")
    if isinstance(content, list):
        texts = [part.get("text", "") for part in content if isinstance(part, dict)]
        content = (
            "".join(texts)
            if len(texts) == 1
            else [{"type": "text", "text": text} for text in texts]
        )
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content or ""}


def _assistant_turn(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    text = "".join(block["text"] for block in blocks if block["type"] == "text")
    calls = [
        {
            "id": block["id"],
            "type": "function",
            "function": {"name": block["name"], "arguments": json.dumps(block["input"])},
        }
        for block in blocks
        if block["type"] == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return message
