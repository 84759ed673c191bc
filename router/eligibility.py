"""Requests a student was not trained for go to the teacher, with the reason counted."""

from __future__ import annotations

from typing import Any

from core.profile import prompt_chars
from core.tool_profile import holds_tool_result, tools_signature
from core.wire import ChatCompletionRequest

_MEDIA_PARTS = frozenset({"image_url", "input_audio", "file", "input_image"})
LENGTH_SLACK = 1.5  # a prompt this much longer than the longest trained one is refused


def ineligible_reason(
    request: ChatCompletionRequest, payload: dict[str, Any], profile: dict[str, Any]
) -> str | None:
    """Why the student must not answer this request, or None if it may."""
    if (request.n or 1) > 1:
        return "n"
    if request.tools and not profile.get("tools"):
        return "tools"
    trained_tools = profile.get("tool_signatures")
    if trained_tools is not None and _unlike_trained_tools(request, payload, profile):
        return "tools"
    for message in request.messages:
        if isinstance(message.content, list) and any(
            part.get("type") in _MEDIA_PARTS for part in message.content
        ):
            return "media"
    fmt = (request.response_format or {}).get("type", "text")
    if fmt != "text" and fmt not in profile.get("response_formats", [fmt]):
        return "response_format"
    models = profile.get("models")
    if models and request.model not in models:
        return "model"
    longest = profile.get("max_prompt_chars")
    if longest and prompt_chars(payload) > longest * LENGTH_SLACK:
        return "too_long"
    return None


def _unlike_trained_tools(
    request: ChatCompletionRequest, payload: dict[str, Any], profile: dict[str, Any]
) -> bool:
    """Other tools than the training's (by schema), or a tool's result to read when no
    trained conversation held one."""
    if request.tools and tools_signature(request.tools) not in profile["tool_signatures"]:
        return True
    if profile["tool_signatures"] and payload.get("tool_choice") == "none":
        return True  # the student answers with a call, which the client ruled out
    messages = payload.get("messages") or []
    return not profile.get("tool_results") and holds_tool_result(messages)
