"""Requests a student was not trained for go to the teacher, with the reason counted."""

from __future__ import annotations

from typing import Any

from core.profile import prompt_chars
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
