"""What a student version was trained on: the distiller records it, the router checks
requests against it (a request unlike the training traffic goes to the teacher)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def prompt_chars(payload: dict[str, Any]) -> int:
    """Characters of text across a request's messages."""
    total = 0
    for message in payload.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    return total


def training_profile(requests: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Models, response formats, whether tools were offered, and the longest prompt."""
    requests = list(requests)
    return {
        "models": sorted({str(r["model"]) for r in requests if r.get("model")}),
        "response_formats": sorted(
            {(r.get("response_format") or {}).get("type", "text") for r in requests}
        ),
        "tools": any(r.get("tools") for r in requests),
        "max_prompt_chars": max((prompt_chars(r) for r in requests), default=0),
    }
