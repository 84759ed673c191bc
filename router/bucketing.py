"""Sticky buckets: the same user (or route key, or request) always lands in the same
bucket of a task, so nobody flips between teacher and student from one call to the next."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

ROUTE_KEY_HEADER = "x-stillroom-route-key"


def route_key(payload: dict[str, Any], header: str | None) -> str:
    """``X-Stillroom-Route-Key``, else the request's ``user``, else its messages."""
    if header:
        return "key:" + header
    user = payload.get("user")
    if isinstance(user, str) and user:
        return "user:" + user
    return "messages:" + hashlib.sha256(orjson.dumps(payload.get("messages"))).hexdigest()


def bucket(task: str, key: str) -> float:
    """A stable number in [0, 100) for this task and key."""
    digest = hashlib.sha256(f"{task}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def in_cutover(task: str, key: str, percent: float) -> bool:
    return bucket(task, key) < percent
