"""``stillroom serve``'s distiller runs in a child process: training never shares the
proxy's process, its runs still show in the proxy's ``/metrics``, it keeps the live
adapters loaded in the student server, and a child that dies is reported on ``/readyz``
and started again."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from core.settings import Settings
from core.store import create_store_engine, create_tables, insert_exchanges, queue_training
from core.tables import ExchangeCreate, StudentVersion

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from fakes.vllm import RunningVllm, write_adapter_config
from routing_support import ADAPTER, publish_version
from servers import wait_until

CHILD_MODULE = "proxy.processes.distiller_process"
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


def distiller_children() -> list[int]:
    """Pids of this process's children that run the distiller."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and CHILD_MODULE.encode() in cmdline:
            found.append(int(entry.name))
    return found


def metrics_text(proxy: RunningProxy) -> str:
    return httpx.get(proxy.url + "/metrics").text


def training_runs(proxy: RunningProxy, outcome: str) -> float | None:
    for family in text_string_to_metric_families(metrics_text(proxy)):
        for sample in family.samples:
            if sample.name == "stillroom_training_runs_total" and sample.labels == {
                "task": TASK,
                "outcome": outcome,
            }:
                return sample.value
    return None


@pytest.fixture
def serving(
    make_settings: Callable[..., Settings],
    teacher: FakeTeacher,
    start_proxy: Callable[..., RunningProxy],
) -> RunningProxy:
    """A proxy with its distiller, on a store holding a task queued for training that has
    too few pairs (the run fails at once)."""
    settings = make_settings(teacher_url=teacher.url + "/v1", train_min_pairs=500)
    engine = create_store_engine(settings.database_url)
    create_tables(engine)
    insert_exchanges(engine=engine, exchanges=exchanges(12))
    queue_training(engine=engine, task=TASK)
    engine.dispose()
    return start_proxy(settings, distiller=True)


def test_training_runs_in_a_child_process_and_shows_in_the_proxys_metrics(
    serving: RunningProxy,
) -> None:
    assert len(distiller_children()) == 1
    wait_until(lambda: training_runs(serving, "failed") == 1, timeout=120)
    assert training_runs(serving, "published") == 0
    families = [f.name for f in text_string_to_metric_families(metrics_text(serving))]
    assert len(families) == len(set(families)), "each family once: the proxy's or the child's"
    assert {"stillroom_request_seconds", "stillroom_training_runs"} <= set(families)
    ready = httpx.get(serving.url + "/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["distiller"] == "ok"


def test_a_distiller_process_that_dies_is_reported_and_started_again(
    serving: RunningProxy,
) -> None:
    [first] = distiller_children()
    os.kill(first, signal.SIGKILL)
    state = serving.runtime.processes["distiller"]
    wait_until(lambda: state() != "ok", timeout=30)
    assert "exited" in state()
    down = httpx.get(serving.url + "/readyz")
    if state() != "ok":  # it may be back already
        assert down.status_code == 503
        assert "exited" in down.json()["distiller"]
    wait_until(lambda: state() == "ok" and distiller_children() not in ([], [first]), timeout=30)
    assert httpx.get(serving.url + "/readyz").json()["distiller"] == "ok"


def test_the_distiller_process_stops_with_the_proxy(serving: RunningProxy) -> None:
    [child] = distiller_children()
    serving.stop()
    assert not Path(f"/proc/{child}").exists() or _zombie(child)


def _zombie(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_serve_loads_the_live_adapter_into_a_student_server_that_lacks_it(
    make_settings: Callable[..., Settings],
    teacher: FakeTeacher,
    sqlite_url: str,
    tmp_path: Path,
    start_proxy: Callable[..., RunningProxy],
) -> None:
    adapter_path = str(write_adapter_config(tmp_path / ADAPTER))
    version_id = publish_version(sqlite_url)
    engine = create_store_engine(sqlite_url)
    with Session(engine) as session:
        version = session.get(StudentVersion, version_id)
        assert version is not None
        version.adapter_path = adapter_path
        session.add(version)
        session.commit()
    engine.dispose()
    replica = RunningVllm()  # started empty, as a student server that restarted
    try:
        settings = make_settings(
            teacher_url=teacher.url + "/v1", student_backend="vllm", student_urls=[replica.url]
        )
        start_proxy(settings, distiller=True)
        wait_until(lambda: replica.fake.adapters.get(ADAPTER) == adapter_path, timeout=60)
    finally:
        replica.stop()
