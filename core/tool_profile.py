"""Which tools a student was trained with, so that routing can tell a request offering
other tools (or none it knows) from one like the training traffic.

Tools match by schema: the function names, descriptions and parameter schemas, whatever
the order they are listed in. A conversation that already holds a tool's result is a
different job (the teacher reads the result and answers); it matches only when such
turns were trained.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson


def tools_signature(tools: list[Any] | None) -> str | None:
    """A stable digest of a request's tools (None without tools)."""
    if not tools:
        return None
    listed = sorted(orjson.dumps(tool, option=orjson.OPT_SORT_KEYS) for tool in tools)
    return hashlib.sha256(b"\n".join(listed)).hexdigest()[:16]


def holds_tool_result(messages: Iterable[Any]) -> bool:
    """Whether a conversation already holds a tool's (or a function's) result."""
    return any(isinstance(m, dict) and m.get("role") in ("tool", "function") for m in messages)


def tool_profile(requests: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The tool facts of a training set: the signatures of the tools offered, and whether
    any conversation held a tool result."""
    requests = list(requests)
    signatures = {tools_signature(r.get("tools")) for r in requests}
    return {
        "tool_signatures": sorted(s for s in signatures if s is not None),
        "tool_results": any(holds_tool_result(r.get("messages") or []) for r in requests),
    }
