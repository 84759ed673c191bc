"""``stillroom distiller``: the scheduler behind ``/healthz`` and ``/metrics``, so that
Prometheus sees its training runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from core.settings import Settings
from core.store import create_store_engine, create_tables, insert_exchanges, queue_training
from core.tables import ExchangeCreate
from proxy.processes.distiller_app import create_distiller_app

from servers import ServerThread, free_port, wait_until

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
TASK = "tiny-task"


def exchanges(count: int) -> list[ExchangeCreate]:
    return [
        ExchangeCreate(
            id=uuid.uuid4().hex,
            task=TASK,
            served_by="teacher",
            status="ok",
            http_status=200,
            model="gpt-4o-mini",
            request={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{n}"}]},
            response={
                "choices": [{"index": 0, "message": {"content": f"a{n}"}, "finish_reason": "stop"}]
            },
            latency_ms=1.0,
        )
        for n in range(count)
    ]


def test_a_failed_run_shows_in_the_distillers_metrics(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = make_settings(train_min_pairs=500)
    engine = create_store_engine(settings.database_url)
    create_tables(engine)
    insert_exchanges(engine=engine, exchanges=exchanges(12))
    queue_training(engine=engine, task=TASK)
    engine.dispose()
    registry = CollectorRegistry()
    server = ServerThread(create_distiller_app(settings, registry=registry)).start()
    try:
        assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}

        def runs(outcome: str) -> float | None:
            labels = {"task": TASK, "outcome": outcome}
            return registry.get_sample_value("stillroom_training_runs_total", labels)

        wait_until(lambda: runs("failed") == 1, timeout=120)
        assert runs("published") == 0
        assert runs("rejected") == 0
        text = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    failed = (("outcome", "failed"), ("task", TASK))
    assert samples[("stillroom_training_runs_total", failed)] == 1
    assert samples[("stillroom_training_run_seconds_count", failed)] == 1


def test_cli_distiller_serves_health_and_metrics_on_its_port(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")}
    env.update(
        STILLROOM_DATABASE_URL=f"sqlite:///{tmp_path / 'distiller.db'}",
        STILLROOM_DATA_DIR=str(tmp_path / "data"),
        STILLROOM_LOG_LEVEL="info",
        HF_HUB_OFFLINE="1",
    )
    log = tmp_path / "distiller.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [STILLROOM, "distiller", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=180)
        metrics = httpx.get(url + "/metrics", timeout=10)
        assert metrics.headers["content-type"].startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(metrics.text)}
        assert {"stillroom_training_runs", "stillroom_drift_score"} <= names
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=60)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert returncode == -signal.SIGTERM, log.read_text()
    assert "Application shutdown complete" in log.read_text()
    assert "Traceback" not in log.read_text()
