"""What identifies a request beyond its task: the canonical hash of what it asks (the
cache's key, the retry detector's and the import's dedup key) and whose it is (the end
user that deletion on request finds)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

# Fields that change how an answer is delivered, not what it is.
DELIVERY_FIELDS = frozenset({"stream", "stream_options"})
END_USER_MAX = 256


def request_hash(payload: dict[str, Any]) -> str:
    """The SHA-256 (hex) of a Chat Completions request as JSON with sorted keys, without
    its delivery fields: a streamed and a whole request for the same answer hash alike."""
    canonical = {k: v for k, v in payload.items() if k not in DELIVERY_FIELDS}
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def end_user(payload: dict[str, Any], route_key: str | None = None) -> str | None:
    """Whose request it is: its ``user`` (a Messages request's ``metadata.user_id`` is
    ``user`` in its chat view), else the ``X-Stillroom-Route-Key`` it came with."""
    user = payload.get("user")
    if not (isinstance(user, str) and user):
        user = route_key or None
    return user[:END_USER_MAX] if user else None
