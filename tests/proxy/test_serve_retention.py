"""In ``stillroom serve`` retention runs in the distiller's child process, and its
deletions show in the proxy's ``/metrics`` beside the proxy's own deletions on request."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, select

from core.settings import Settings
from core.store import create_store_engine, create_tables, insert_exchanges
from core.tables import Exchange, ExchangeCreate

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from servers import wait_until


def exchange(days_old: float, user: str) -> ExchangeCreate:
    return ExchangeCreate(
        id=uuid.uuid4().hex,
        task="triage",
        created_at=datetime.now(UTC) - timedelta(days=days_old),
        served_by="teacher",
        status="ok",
        http_status=200,
        request={"model": "m", "messages": [{"role": "user", "content": f"{user} asks"}]},
        end_user=user,
        latency_ms=1.0,
    )


def deleted(proxy: RunningProxy) -> dict[str, float]:
    families = list(text_string_to_metric_families(httpx.get(proxy.url + "/metrics").text))
    assert len({f.name for f in families}) == len(families), "each family once"
    return {
        sample.labels["reason"]: sample.value
        for family in families
        for sample in family.samples
        if sample.name == "stillroom_exchanges_deleted_total"
    }


def test_serve_deletes_expired_exchanges_in_its_distiller_and_counts_both_reasons(
    make_settings: Callable[..., Settings],
    teacher: FakeTeacher,
    start_proxy: Callable[..., RunningProxy],
) -> None:
    settings = make_settings(
        teacher_url=teacher.url + "/v1", retention_days=30, retention_check_seconds=0.5
    )
    engine = create_store_engine(settings.database_url)
    create_tables(engine)
    insert_exchanges(
        engine=engine,
        exchanges=[exchange(40, "old"), exchange(40, "old"), exchange(1, "ann"), exchange(1, "bo")],
    )
    engine.dispose()
    proxy = start_proxy(settings, distiller=True)

    def users() -> list[str]:
        with Session(proxy.engine) as session:
            return sorted(str(user) for user in session.exec(select(Exchange.end_user)).all())

    wait_until(lambda: users() == ["ann", "bo"], timeout=60)
    httpx.delete(proxy.url + "/admin/exchanges", params={"user": "ann"}).raise_for_status()

    wait_until(lambda: deleted(proxy).get("retention") == 2, timeout=30)
    assert deleted(proxy) == {"retention": 2.0, "request": 1.0}
    assert users() == ["bo"]
