"""Store helpers shared by the store and migration tests."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from core.store import create_tables


def race_create_tables(engines: list[sa.Engine]) -> list[BaseException]:
    """Call create_tables on every engine at the same moment; return what they raised."""
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def create(engine: sa.Engine) -> None:
        try:
            barrier.wait(timeout=10)
            create_tables(engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors
