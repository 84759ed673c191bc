"""Retries and re-asks: a client that asks again is saying the answer it got was wrong.

Two signs, read off client exchanges as the capture writer stores them (in its background
thread, never on the request path), each found by the index on (task, request_hash):

- **retry**: the same request (same ``request_hash``, client key and end user) of the same
  task sent again within ``retry_seconds`` after an ok answer to it ended. A cache hit
  (``served_by`` ``cache``) is no retry: a deterministic request answered from the store
  is an app asking the same thing twice, not a client unhappy with the first answer.
- **reask**: a conversation sent again with the earlier answer and a complaint appended:
  its messages end with an assistant turn followed only by user or tool turns, one of
  which matches ``complaint`` (instructor appends the answer, then a ``tool`` turn per
  call saying "Validation Error found: ... Recall the function correctly, fix the errors",
  or a ``user`` turn in its JSON modes; pydantic-ai ends its with "Fix the errors and try
  again."), and an earlier ok exchange of the same task within ``reask_seconds`` asked
  exactly the rest (the request hash of it without those turns) and answered what the
  assistant turn says (its text, or its tool calls' names and arguments). Without a
  complaint it is a conversation going on (an agent's tool result, a follow-up), and
  the earlier answer stands.

The earlier exchange is marked ``suspect`` (``retry`` or ``reask``), which keeps it out of
training (``distiller.curation``) and out of the cache, and counted in
``stillroom_suspect_answers_total``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from core.metrics import Metrics
from core.request_identity import request_hash
from core.settings import REASK_PHRASES, Settings
from core.tables import Exchange, ExchangeCreate

log = logging.getLogger("stillroom.capture")

Suspicion = Literal["retry", "reask"]
Said = tuple[str, ...]  # what an answer says: its text, or each tool call's name and arguments

# An earlier answer can take this long (a slow teacher) and still be the one retried.
_LONGEST_ANSWER = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class RetryRules:
    """What makes an earlier answer suspect (from ``STILLROOM_RETRY_WINDOW_SECONDS``,
    ``STILLROOM_REASK_WINDOW_SECONDS`` and ``STILLROOM_REASK_PHRASES``)."""

    retry_seconds: float = 10.0
    reask_seconds: float = 600.0
    complaint: re.Pattern[str] = field(default_factory=lambda: complaint_of(REASK_PHRASES))

    @classmethod
    def of(cls, settings: Settings) -> RetryRules:
        return cls(
            retry_seconds=settings.retry_window_seconds,
            reask_seconds=settings.reask_window_seconds,
            complaint=complaint_of(settings.reask_phrases),
        )


def complaint_of(phrases: Sequence[str]) -> re.Pattern[str]:
    """A pattern finding any of ``phrases`` in any case; none: one that finds nothing."""
    alternatives = "|".join(re.escape(p) for p in phrases if p) or r"(?!)"
    return re.compile(alternatives, re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Sign:
    """What one new exchange says of an earlier one: that an exchange of its task which
    asked ``request_hash`` (and said ``said``, for a re-ask) within ``window`` seconds
    before it was answered wrongly."""

    reason: Suspicion
    exchange: ExchangeCreate
    request_hash: str
    window: float
    said: Said | None = None


@dataclass(frozen=True, slots=True)
class _Earlier:
    id: str
    task: str
    request_hash: str | None
    created_at: datetime
    latency_ms: float
    client_key_hash: str | None
    end_user: str | None
    response: dict[str, Any] | None


def signs_of(exchange: ExchangeCreate, rules: RetryRules) -> list[Sign]:
    """The signs this exchange gives: only a client's own request to the model gives any."""
    if exchange.origin != "client" or exchange.served_by == "cache":
        return []
    found: list[Sign] = []
    if rules.retry_seconds > 0 and exchange.request_hash is not None:
        found.append(Sign("retry", exchange, exchange.request_hash, rules.retry_seconds))
    reask = _reask(exchange, rules)
    if reask is not None:
        found.append(reask)
    return found


def _reask(exchange: ExchangeCreate, rules: RetryRules) -> Sign | None:
    messages = exchange.request.get("messages")
    if rules.reask_seconds <= 0 or not isinstance(messages, list):
        return None
    turns = [m if isinstance(m, dict) else {} for m in messages]
    answers = [at for at, turn in enumerate(turns) if turn.get("role") == "assistant"]
    if not answers or answers[-1] in (0, len(turns) - 1):
        return None
    at = answers[-1]
    appended = turns[at + 1 :]
    if any(turn.get("role") not in ("user", "tool") for turn in appended):
        return None
    if not any(rules.complaint.search(_text(turn.get("content"))) for turn in appended):
        return None
    said = said_by(turns[at])
    if said is None:
        return None
    asked = request_hash({**exchange.request, "messages": messages[:at]})
    return Sign("reask", exchange, asked, rules.reask_seconds, said)


def said_by(message: dict[str, Any]) -> Said | None:
    """What an assistant message says: each tool call's name and arguments, else its text
    (JSON with sorted keys, so that spacing does not count); None if it says nothing."""
    calls = message.get("tool_calls") or []
    if isinstance(calls, list) and calls:
        said = []
        for call in calls:
            function = (call.get("function") or {}) if isinstance(call, dict) else {}
            said.append(f"{function.get('name')}:{_canonical(function.get('arguments'))}")
        return tuple(said)
    text = _text(message.get("content")).strip()
    return (_canonical(text),) if text else None


def _canonical(arguments: Any) -> str:
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return str(arguments).strip()
    return orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS).decode()


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def mark_suspects(
    engine: Engine, exchanges: Sequence[ExchangeCreate], rules: RetryRules, metrics: Metrics
) -> int:
    """Mark the earlier answers that these just-stored exchanges make suspect; how many
    were marked. Never raises: a failure here must not fail (or repeat) the write."""
    try:
        return _mark(engine, exchanges, rules, metrics)
    except Exception:
        log.exception("looking for retried answers failed; the batch is stored unmarked")
        return 0


def _mark(
    engine: Engine, exchanges: Sequence[ExchangeCreate], rules: RetryRules, metrics: Metrics
) -> int:
    signs = [sign for exchange in exchanges for sign in signs_of(exchange, rules)]
    if not signs:
        return 0
    since = min(
        _aware(s.exchange.created_at) - timedelta(seconds=s.window) - _LONGEST_ANSWER for s in signs
    )
    query = sa.select(*(col(getattr(Exchange, f.name)) for f in fields(_Earlier))).where(
        col(Exchange.task).in_(sorted({s.exchange.task for s in signs})),
        col(Exchange.request_hash).in_(sorted({s.request_hash for s in signs})),
        col(Exchange.origin) == "client",
        col(Exchange.status) == "ok",
        col(Exchange.suspect).is_(None),
        col(Exchange.created_at) >= since,
    )
    marked = 0
    with engine.begin() as connection:
        earlier = [_Earlier(**row._mapping) for row in connection.execute(query).all()]
        for sign in signs:
            found = _latest_match(sign, earlier)
            if found is None:
                continue
            updated = connection.execute(
                sa.update(Exchange)
                .where(col(Exchange.id) == found.id, col(Exchange.suspect).is_(None))
                .values(suspect=sign.reason)
            )
            if updated.rowcount:
                marked += 1
                metrics.prepare_feedback(found.task)
                metrics.suspect_answers.labels(task=found.task, reason=sign.reason).inc()
                log.info(
                    "exchange %s of %s is suspect (%s by exchange %s)",
                    found.id,
                    found.task,
                    sign.reason,
                    sign.exchange.id,
                )
    return marked


def _latest_match(sign: Sign, earlier: list[_Earlier]) -> _Earlier | None:
    matches = [e for e in earlier if _matches(sign, e)]
    return max(matches, key=lambda e: _aware(e.created_at)) if matches else None


def _matches(sign: Sign, earlier: _Earlier) -> bool:
    """Whether ``earlier`` is the answer ``sign`` says was wrong: the same task, request,
    client key and end user, answered before the new request began and at most the
    window before it, and (a re-ask) saying what the new request says it said."""
    new = sign.exchange
    if earlier.id == new.id or (earlier.task, earlier.request_hash) != (
        new.task,
        sign.request_hash,
    ):
        return False
    if (earlier.client_key_hash, earlier.end_user) != (new.client_key_hash, new.end_user):
        return False
    ended = _aware(earlier.created_at) + timedelta(milliseconds=earlier.latency_ms)
    began = _aware(new.created_at)
    if not ended <= began <= ended + timedelta(seconds=sign.window):
        return False
    if sign.said is None:
        return True
    choices = (earlier.response or {}).get("choices") or []
    message = (choices[0].get("message") or {}) if choices else {}
    return said_by(message) == sign.said


def _aware(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes; the store holds UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
