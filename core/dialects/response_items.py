"""A Responses request's ``input`` listed as OpenAI lists the input items of a stored
response (``GET /v1/responses/{id}/input_items``): one item per input item, each with an
id and a status, in the shapes of OpenAI's ``ItemResource``.

A string input is one user message; message content given as a string is one text part
(``input_text``, or ``output_text`` for the assistant's turns). An item that came with an
id keeps it; the others get ids that follow from the response's id and their place, so the
same input is listed the same way every time (and a page's ``after`` names the same item).
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from core.wire.responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputItem,
    InputMessageItem,
    OutputContent,
    OutputMessage,
    OutputText,
    Refusal,
    ResponseItemList,
)

Order = Literal["asc", "desc"]

_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


def input_items(request: dict[str, Any], response_id: str) -> list[InputItem]:
    """The input items of the response ``response_id`` gave to ``request``, in input order.
    Items of other types than messages and function calls (a student never answers them)
    are left out."""
    given = request.get("input")
    items = (
        [{"type": "message", "role": "user", "content": given}] if isinstance(given, str) else given
    )
    listed: list[InputItem] = []
    for number, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        prefix = _PREFIXES.get(kind)
        if prefix is None:
            continue
        item_id = item.get("id") if isinstance(item.get("id"), str) else None
        listed.append(_item(kind, item, item_id or _item_id(prefix, response_id, number)))
    return listed


def page(
    items: list[InputItem], *, limit: int, order: Order, after: str | None
) -> ResponseItemList:
    """One page of ``items``: ``limit`` of them in ``order``, after the item ``after``."""
    ordered = items if order == "asc" else items[::-1]
    if after is not None:
        ids = [item.id for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    shown = ordered[:limit]
    return ResponseItemList(
        data=shown,
        first_id=shown[0].id if shown else None,
        last_id=shown[-1].id if shown else None,
        has_more=len(ordered) > limit,
    )


def _item(kind: str, item: dict[str, Any], item_id: str) -> InputItem:
    if kind == "function_call":
        return FunctionCallItem(
            id=item_id,
            status="completed",
            call_id=str(item.get("call_id", "")),
            name=str(item.get("name", "")),
            arguments=str(item.get("arguments", "")),
        )
    if kind == "function_call_output":
        output = item.get("output")
        return FunctionCallOutputItem(
            id=item_id,
            call_id=str(item.get("call_id", "")),
            output=output if isinstance(output, list) else str(output or ""),
        )
    content = item.get("content")
    if item.get("role") == "assistant":
        return OutputMessage(id=item_id, status="completed", content=_assistant_parts(content))
    parts = [{"type": "input_text", "text": content}] if isinstance(content, str) else content
    return InputMessageItem(
        id=item_id, role=item.get("role", "user"), content=[dict(p) for p in parts or []]
    )


def _assistant_parts(content: Any) -> list[OutputContent]:
    if isinstance(content, str):
        return [OutputText(text=content)]
    parts: list[OutputContent] = []
    for part in content if isinstance(content, list) else []:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append(OutputText(text=part["text"], annotations=part.get("annotations") or []))
        elif isinstance(part, dict) and part.get("type") == "refusal":
            parts.append(Refusal(refusal=str(part.get("refusal", ""))))
    return parts


def _item_id(prefix: str, response_id: str, number: int) -> str:
    digest = hashlib.sha256(f"{response_id}:input:{number}".encode()).hexdigest()[:48]
    return f"{prefix}_{digest}"
