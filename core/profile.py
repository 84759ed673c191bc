"""What a student version was trained on: the distiller records it, the router checks
requests against it (a request unlike the training traffic goes to the teacher)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
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


def prompt_key(messages: Sequence[dict[str, Any]]) -> str:
    """What distinguishes one prompt from another: the non-system turns, normalised."""
    parts = []
    for message in messages:
        if message.get("role") in ("system", "developer"):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(f"{message.get('role')}: {' '.join(str(content or '').split()).lower()}")
    return "\n".join(parts)


def in_heldout(key: str, percent: int) -> bool:
    """Stable split: the same prompt is always on the same side."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 100
    return bucket < percent
