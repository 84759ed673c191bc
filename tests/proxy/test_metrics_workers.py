"""``stillroom proxy --workers N``: whichever worker answers ``/metrics`` reports the
requests of all of them, in the folder ``PROMETHEUS_MULTIPROC_DIR`` names or, unset, in a
temporary one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from fakes.teacher import FakeTeacher
from servers import free_port, wait_until

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
TASK = "greet"


@pytest.fixture(params=["named", "temporary"])
def workers(
    request: pytest.FixtureRequest, tmp_path: Path, teacher: FakeTeacher
) -> Iterator[tuple[str, Path]]:
    """Two proxy workers in front of the fake teacher: their URL and metrics folder."""
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STILLROOM_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        STILLROOM_TEACHER_URL=teacher.url + "/v1",
        STILLROOM_DATABASE_URL=f"sqlite:///{tmp_path / 'workers.db'}",
        STILLROOM_DATA_DIR=str(tmp_path / "data"),
        STILLROOM_LOG_LEVEL="info",  # each worker logs the end of its start-up
        STILLROOM_TENANCY="single",  # metrics by the task's bare name
        TMPDIR=str(tmp_path),
    )
    if request.param == "named":
        metrics_dir = tmp_path / "metrics"
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        metrics_dir.mkdir()
        (metrics_dir / "counter_1.db").write_bytes(b"left by an earlier run")
    log_path = tmp_path / "proxy.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [STILLROOM, "proxy", "--workers", "2", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def both_up() -> bool:
        assert process.poll() is None, log_path.read_text()
        return log_path.read_text().count("Application startup complete") == 2

    wait_until(both_up, timeout=180)
    if request.param == "temporary":
        [metrics_dir] = tmp_path.glob("stillroom-metrics-*")
    yield url, metrics_dir
    process.terminate()
    process.wait(timeout=60)
    log.close()
    assert metrics_dir.exists() == (request.param == "named"), "a temporary folder is removed"


def ask(url: str) -> None:
    # A new connection each time, so that either worker may accept it.
    response = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-stillroom-task": TASK, "authorization": "Bearer sk-client"},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def answered_by_pid(metrics_dir: Path) -> dict[str, float]:
    """Requests each worker counted, from its own counter file."""
    counted = {}
    for path in metrics_dir.glob("counter_*.db"):
        [family] = [
            f for f in MultiProcessCollector.merge([str(path)]) if f.name == "stillroom_requests"
        ] or [None]
        if family is not None:
            counted[path.stem.removeprefix("counter_")] = sum(s.value for s in family.samples)
    return counted


def scraped_requests(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "stillroom_requests_total" and sample.labels["task"] == TASK
    )


def test_metrics_count_the_requests_of_every_worker(workers: tuple[str, Path]) -> None:
    url, metrics_dir = workers
    assert not (metrics_dir / "counter_1.db").exists(), "files of an earlier run were kept"
    sent = 0
    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(max_workers=8) as pool:
        while len([n for n in answered_by_pid(metrics_dir).values() if n > 0]) < 2:
            assert time.monotonic() < deadline, f"one worker answered all {sent} requests"
            list(pool.map(lambda _: ask(url), range(20)))
            sent += 20
    assert sum(answered_by_pid(metrics_dir).values()) == sent
    for _ in range(10):  # answered by one worker or the other
        assert scraped_requests(url) == sent


def test_worker_gauges_are_combined_not_repeated_per_process(workers: tuple[str, Path]) -> None:
    url, _ = workers
    ask(url)

    def task_mode_exported() -> bool:
        return "stillroom_task_mode{" in httpx.get(url + "/metrics", timeout=10).text

    wait_until(task_mode_exported, timeout=30)
    families = {
        family.name: family
        for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text)
    }
    modes = [s for s in families["stillroom_task_mode"].samples if s.labels["task"] == TASK]
    assert {s.labels["mode"]: s.value for s in modes} == {"off": 1, "shadow": 0, "live": 0}
    assert all("pid" not in s.labels for s in modes)
    [store_up] = families["stillroom_store_up"].samples
    assert store_up.value == 1
    [queue] = families["stillroom_capture_queue_depth"].samples
    assert queue.value >= 0
