"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from core.settings import Settings

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from servers import free_port, wait_until


def _samples(proxy: RunningProxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(proxy.url + "/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_healthz_answers(proxy: RunningProxy) -> None:
    response = httpx.get(proxy.url + "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_checks_store_and_teacher(proxy: RunningProxy, teacher: FakeTeacher) -> None:
    response = httpx.get(proxy.url + "/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "store": "ok", "teacher": "ok"}


def test_readyz_fails_when_the_teacher_is_unreachable(
    make_settings: Callable[..., Settings], start_proxy: Callable[[Settings], RunningProxy]
) -> None:
    proxy = start_proxy(make_settings(teacher_url=f"http://127.0.0.1:{free_port()}/v1"))
    response = httpx.get(proxy.url + "/readyz")
    assert response.status_code == 503
    assert response.json()["teacher"].startswith("error")
    assert response.json()["store"] == "ok"


def test_metrics_count_requests_tokens_and_cost(proxy: RunningProxy, teacher: FakeTeacher) -> None:
    client = proxy.client()
    for _ in range(3):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Stillroom-Task": "greet"},
        )
    samples = _samples(proxy)
    key = (("served_by", "teacher"), ("status", "ok"), ("task", "greet"))
    assert samples[("stillroom_requests_total", key)] == 3
    tokens_in = samples[
        (
            "stillroom_tokens_total",
            (("direction", "in"), ("served_by", "teacher"), ("task", "greet")),
        )
    ]
    assert tokens_in > 0
    cost = samples[("stillroom_cost_usd_total", (("served_by", "teacher"), ("task", "greet")))]
    assert cost > 0
    overhead = samples[("stillroom_overhead_seconds_count", (("stream", "false"),))]
    assert overhead == 3


def test_readyz_fails_with_the_reason_when_the_store_refuses_exchanges_for_its_schema(
    proxy: RunningProxy,
) -> None:
    with proxy.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE exchanges RENAME TO exchanges_elsewhere"))
    proxy.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    wait_until(lambda: proxy.runtime.capture.schema_fault is not None)

    response = httpx.get(proxy.url + "/readyz")

    assert response.status_code == 503
    assert response.json()["store"] == "error: schema: no such table: exchanges"
    assert response.json()["teacher"] == "ok"
