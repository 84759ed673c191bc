"""Deleting exchanges, and everything in the store that holds their text.

One function deletes for both retention (``core.retention``) and deletion on request
(``DELETE /admin/exchanges``), so that both remove the same things:

- the exchanges an :class:`ExchangeFilter` selects (with their ``client_response``: a
  Responses API answer stored on the row goes with it), less those it is told to keep;
- the audit exchanges made for them: an audit asks the teacher the same chat request
  again, so it is the ``origin="audit"`` exchange of the same task with the same
  ``request_hash`` (an identical request of someone else's shares that audit: it is
  deleted too, and holds no text but that same request's);
- the shadow results of any of those (``exchange_id``: the question, the student's and the
  teacher's answers). A shadow result has no end user, so ``user=`` finds it only through
  its exchange; ``task=`` and ``before=`` alone also find it by its own task and time.

Rows go in batches of ``batch_size`` exchanges, one short transaction each, so that a
large deletion never holds a long lock on SQLite or Postgres.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col, select

from core.errors import InvalidRequestError
from core.tables import Exchange, ExchangeBase, ShadowResult

BATCH_ROWS = 500


@dataclass(frozen=True, slots=True)
class ExchangeFilter:
    """Which exchanges to delete: all of ``user``'s (``exchanges.end_user``), of ``task``
    (its key), and created before ``before`` (timezone-aware), together."""

    user: str | None = None
    task: str | None = None
    before: datetime | None = None

    def __post_init__(self) -> None:
        if self.user is None and self.task is None and self.before is None:
            raise InvalidRequestError("say which exchanges to delete: user, task or before")
        if self.before is not None:
            if self.before.tzinfo is None:
                raise InvalidRequestError("before needs a timezone (Z or +HH:MM)", param="before")
            # In UTC, as stored: SQLite compares the wall time and drops any other offset.
            object.__setattr__(self, "before", self.before.astimezone(UTC))

    def clauses(self, table: Any = Exchange) -> list[Any]:
        """The filter as SQL conditions on ``table`` (exchanges, or an alias of it)."""
        clauses: list[Any] = []
        if self.user is not None:
            clauses.append(table.end_user == self.user)
        if self.task is not None:
            clauses.append(table.task == self.task)
        if self.before is not None:
            clauses.append(table.created_at < self.before)
        return clauses

    def matches(self, exchange: ExchangeBase) -> bool:
        """Whether the filter selects ``exchange`` (a row not yet stored: a spilled one)."""
        if self.user is not None and exchange.end_user != self.user:
            return False
        if self.task is not None and exchange.task != self.task:
            return False
        return self.before is None or exchange.created_at < self.before

    def shadow_clauses(self) -> list[Any] | None:
        """Conditions finding shadow results by their own task and time, or None when
        the filter names a user (only their exchanges say whose they are)."""
        if self.user is not None:
            return None
        clauses: list[Any] = []
        if self.task is not None:
            clauses.append(ShadowResult.task == self.task)
        if self.before is not None:
            clauses.append(col(ShadowResult.created_at) < self.before)
        return clauses

    def document(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "task": self.task,
            "before": self.before.isoformat() if self.before is not None else None,
        }


@dataclass(slots=True)
class Deletion:
    """What a deletion removed (or, counted first, would remove)."""

    exchanges: int = 0  # selected by the filter
    audit_exchanges: int = 0  # made for them, beyond those
    shadow_results: int = 0

    @property
    def total_exchanges(self) -> int:
        return self.exchanges + self.audit_exchanges

    def add(self, other: Deletion) -> None:
        self.exchanges += other.exchanges
        self.audit_exchanges += other.audit_exchanges
        self.shadow_results += other.shadow_results

    def document(self) -> dict[str, int]:
        return asdict(self)


def count_exchanges_to_delete(
    *, engine: Engine, selection: ExchangeFilter, keep: Iterable[str] = ()
) -> Deletion:
    """What :func:`delete_exchanges` would remove now (the dry run)."""
    kept = list(keep)
    client, chosen = sa.orm.aliased(Exchange), sa.orm.aliased(Exchange)
    matched = select(col(Exchange.id)).where(*selection.clauses(), *_not_kept(Exchange, kept))
    linked = (
        select(col(Exchange.id))
        .where(
            Exchange.origin == "audit",
            *_not_kept(Exchange, kept),
            # NOT IN, not NOT(filter): a NULL end_user must not hide an audit.
            col(Exchange.id).not_in(select(chosen.id).where(*selection.clauses(chosen))),
            select(client.id)
            .where(
                client.origin != "audit",
                client.task == Exchange.task,
                client.request_hash == Exchange.request_hash,
                *selection.clauses(client),
                *_not_kept(client, kept),
            )
            .exists(),
        )
        .scalar_subquery()
    )
    with engine.connect() as connection:
        exchanges = _count(connection, matched.subquery())
        audits = _count(connection, select(linked).subquery()) if exchanges else 0
        shadow: list[Any] = [
            col(ShadowResult.exchange_id).in_(matched.scalar_subquery()),
            col(ShadowResult.exchange_id).in_(linked),
        ]
        direct = selection.shadow_clauses()
        if direct is not None:
            shadow.append(sa.and_(*direct) if direct else sa.true())
        results = connection.execute(
            select(sa.func.count()).select_from(ShadowResult).where(sa.or_(*shadow))
        ).scalar_one()
    return Deletion(exchanges=exchanges, audit_exchanges=audits, shadow_results=results)


def delete_exchanges(
    *,
    engine: Engine,
    selection: ExchangeFilter,
    keep: Iterable[str] = (),
    batch_size: int = BATCH_ROWS,
) -> Deletion:
    """Delete what ``selection`` selects (less the exchanges ``keep`` names) and what holds
    their text, ``batch_size`` exchanges a transaction; the counts of what went."""
    kept = list(keep)
    deleted = Deletion()
    while True:
        with engine.begin() as connection:
            batch = _delete_batch(connection, selection, kept, batch_size)
        deleted.add(batch)
        if batch.exchanges < batch_size:
            break
    direct = selection.shadow_clauses()
    if direct is not None:
        deleted.shadow_results += _delete_shadow_results(engine, direct, batch_size)
    return deleted


def _delete_batch(
    connection: Connection, selection: ExchangeFilter, kept: list[str], batch_size: int
) -> Deletion:
    rows = connection.execute(
        select(Exchange.id, Exchange.task, Exchange.request_hash, Exchange.origin)
        .where(*selection.clauses(), *_not_kept(Exchange, kept))
        .order_by(col(Exchange.created_at), col(Exchange.id))
        .limit(batch_size)
    ).all()
    if not rows:
        return Deletion()
    ids = [row.id for row in rows]
    asked = {(row.task, row.request_hash) for row in rows if row.origin != "audit"}
    audits = _audits_of(connection, asked, set(ids), kept)
    gone = ids + audits
    results = connection.execute(
        sa.delete(ShadowResult).where(col(ShadowResult.exchange_id).in_(gone))
    ).rowcount
    exchanges = connection.execute(sa.delete(Exchange).where(col(Exchange.id).in_(gone))).rowcount
    return Deletion(
        exchanges=exchanges - len(audits),
        audit_exchanges=len(audits),
        shadow_results=results,
    )


def _audits_of(
    connection: Connection,
    asked: set[tuple[str, str | None]],
    taken: set[str],
    kept: list[str],
) -> list[str]:
    """The audit exchanges of the same task and request as one of ``asked``."""
    hashes = {request_hash for _task, request_hash in asked if request_hash is not None}
    if not hashes:
        return []
    rows = connection.execute(
        select(Exchange.id, Exchange.task, Exchange.request_hash).where(
            Exchange.origin == "audit",
            col(Exchange.request_hash).in_(sorted(hashes)),
            col(Exchange.task).in_(sorted({task for task, _hash in asked})),
            *_not_kept(Exchange, kept),
        )
    ).all()
    return [row.id for row in rows if (row.task, row.request_hash) in asked and row.id not in taken]


def _delete_shadow_results(engine: Engine, clauses: Sequence[Any], batch_size: int) -> int:
    """Shadow results found by their own task and time, in batches."""
    deleted = 0
    while True:
        with engine.begin() as connection:
            ids = (
                connection.execute(select(ShadowResult.id).where(*clauses).limit(batch_size))
                .scalars()
                .all()
            )
            if ids:
                connection.execute(sa.delete(ShadowResult).where(col(ShadowResult.id).in_(ids)))
        deleted += len(ids)
        if len(ids) < batch_size:
            return deleted


def _not_kept(table: Any, kept: list[str]) -> list[Any]:
    return [sa.not_(table.id.in_(kept))] if kept else []


def _count(connection: Connection, query: Any) -> int:
    return int(connection.execute(select(sa.func.count()).select_from(query)).scalar_one())
