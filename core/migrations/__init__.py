"""Schema migrations of the store: numbered Alembic revisions, applied at start.

Each revision lives in ``versions/NNNN_what.py``; its ``revision`` is its file's stem and
its ``down_revision`` the previous number's, so the history is one line and the newest
file is the head. ``0001_baseline`` is the schema of the last release made without
migrations (683dfd0), written out in full: a store that release made holds exactly its
tables, is stamped with it and upgraded from there.

:func:`core.store.create_tables` brings a store to the head at every start, under a lock;
``stillroom db upgrade`` does the same by hand and ``stillroom db current`` reports. The
head is read from the file names, so that a store already at head costs no Alembic import
(Alembic is loaded by :mod:`core.migrations.upgrade` only when there is work).

A change to ``core.tables`` needs a new revision (copy the latest; batch operations, so
that SQLite can alter tables): tests/core/test_migrations.py fails while the models and
the migrations differ.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

VERSIONS = Path(__file__).resolve().parent / "versions"
BASELINE = "0001_baseline"
VERSION_TABLE = "alembic_version"


@functools.cache
def revisions() -> tuple[str, ...]:
    """Every revision this build knows, oldest first."""
    return tuple(sorted(path.stem for path in VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py")))


def head() -> str:
    """The newest revision: the schema of this build's models."""
    return revisions()[-1]


def newer_store_message(revision: str) -> str:
    """What to tell the user of a store at ``revision``, which this build does not know."""
    return (
        f"the store's schema is at revision {revision!r}, which this build of stillroom "
        f"does not know (its newest is {head()!r}): a newer stillroom has upgraded the "
        "store. Upgrade stillroom to that release or later; do not point an older one at it."
    )


@dataclass(frozen=True)
class SchemaStatus:
    """Where a store's schema stands against this build's."""

    current: str | None  # the revision the store records; None when it records none
    has_tables: bool  # the store holds stillroom's tables (made by a release before 0001)

    @property
    def head(self) -> str:
        return head()

    @property
    def known(self) -> bool:
        """False when a newer stillroom has upgraded the store."""
        return self.current is None or self.current in revisions()

    @property
    def pending(self) -> tuple[str, ...]:
        """Revisions an upgrade would apply, oldest first (none for an unknown revision)."""
        if not self.known:
            return ()
        if self.current is None:
            # A store of the release before migrations is stamped with the baseline.
            return revisions()[1:] if self.has_tables else revisions()
        return revisions()[revisions().index(self.current) + 1 :]
