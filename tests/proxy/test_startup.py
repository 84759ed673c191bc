"""Start-up against the store's schema: a store this build cannot use stops it."""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from core.errors import StoreSchemaError
from core.settings import Settings
from core.store import create_store_engine, create_tables
from proxy.processes.app import create_app


async def test_proxy_does_not_start_on_a_store_newer_than_the_build(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    engine = create_store_engine(settings.database_url)
    try:
        create_tables(engine)
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE alembic_version SET version_num = '0099_future'"))
    finally:
        engine.dispose()
    app = create_app(settings, registry=CollectorRegistry())

    with pytest.raises(StoreSchemaError, match=r"'0099_future'.*Upgrade stillroom"):
        async with app.router.lifespan_context(app):
            pass


async def test_objects_made_at_start_up_are_kept_out_of_full_collections_while_serving(
    make_settings: Callable[..., Settings],
) -> None:
    # A full collection walks every tracked object; start-up leaves a few hundred thousand
    # (torch, pydantic, SQLAlchemy) that live as long as the proxy.
    app = create_app(make_settings(), registry=CollectorRegistry())
    frozen_before = gc.get_freeze_count()
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > max(frozen_before, 10_000)
    assert gc.get_freeze_count() == 0, "a stopped proxy leaves nothing frozen behind"
