"""The production shape in real processes: two `stillroom proxy` and two `stillroom
distiller` started by the CLI on one Postgres store, with `stillroom student` on the tiny
Llama as the student server and a fake teacher."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.store import create_store_engine
from core.tables import Exchange, StudentVersion, TrainingRun

from conftest import postgres_database
from fakes.teacher import FakeTeacher
from servers import ServerThread, free_port, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
TOKEN = "admin-token-for-replicas"
TASK = "yes-no"
SYSTEM = "Answer yes for alpha requests and no for beta requests."
TRAFFIC = 100  # requests of TASK: a first version trains on all of them (DISTILLER_ENV)
STARTUP_SECONDS = 240.0

SHARED_ENV = {
    "STILLROOM_ADMIN_TOKEN": TOKEN,
    "STILLROOM_LOG_LEVEL": "warning",
    "STILLROOM_TENANCY": "single",  # every client presents sk-client; tasks by bare name
    "HF_HUB_OFFLINE": "1",
}
DISTILLER_ENV = {
    "STILLROOM_STUDENT_KINDS": "lora",
    "STILLROOM_DISTILL_FIRST_PAIRS": "100",
    "STILLROOM_DISTILL_INTERVAL_SECONDS": "1",
    "STILLROOM_TRAIN_MIN_PAIRS": "20",
    "STILLROOM_HELDOUT_PERCENT": "40",
    "STILLROOM_LORA_EPOCHS": "4",
    "STILLROOM_LORA_LEARNING_RATE": "5e-3",
    "STILLROOM_TARGET_AGREEMENT": "0.8",
    "STILLROOM_PUBLISH_MIN_SHARE": "0.2",
}
PROXY_ENV = {
    # The routing decision alone is under test: no gate of past agreement in the way.
    "STILLROOM_DIFFICULTY_GATE": "false",
}


class Process:
    """One `stillroom` command in a process of its own, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logs / f"{name}.log"
        command = [STILLROOM, *args, "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            assert self.popen.poll() is None, f"{self.name} exited:\n{self.output()}"
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} did not answer {path}:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


@dataclass
class Cluster:
    proxies: list[Process]
    distillers: list[Process]
    engine: Engine

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()}" for p in [*self.proxies, *self.distillers])


def base_environment() -> dict[str, str]:
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("STILLROOM_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    return {**inherited, **SHARED_ENV}


def label_of(payload: dict[str, Any]) -> str:
    return "yes" if "alpha" in payload["messages"][-1]["content"] else "no"


@pytest.fixture(scope="module")
def cluster(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    database = postgres_database()
    database_url = next(database)
    teacher = FakeTeacher()
    teacher.responder = label_of
    teacher_server = ServerThread(teacher.app).start()
    started: list[Process] = []

    def start(name: str, args: list[str], **env: str) -> Process:
        process = Process(name, args, {**base_environment(), **env}, root)
        started.append(process)
        return process

    common = {
        "STILLROOM_DATABASE_URL": database_url,
        "STILLROOM_TEACHER_URL": teacher_server.url + "/v1",
        "STILLROOM_BASE_MODEL": str(tiny_model),
    }
    try:
        student = start("student", ["student"], **common)
        student_url = {"STILLROOM_STUDENT_URL": student.url}
        proxies = [
            start(
                f"proxy-{n}",
                ["proxy"],
                **common,
                **student_url,
                **PROXY_ENV,
                STILLROOM_DATA_DIR=str(root / f"proxy-{n}"),
            )
            for n in (1, 2)
        ]
        distillers = [
            start(
                f"distiller-{n}",
                ["distiller"],
                **common,
                **student_url,
                **DISTILLER_ENV,
                # One adapters folder, as the volume the distiller shares with vLLM.
                STILLROOM_DATA_DIR=str(root / "adapters"),
            )
            for n in (1, 2)
        ]
        student.wait_ready("/health")
        for process in [*proxies, *distillers]:
            process.wait_ready("/healthz")
        engine = create_store_engine(database_url)
        yield Cluster(proxies, distillers, engine)
        engine.dispose()
    finally:
        for process in reversed(started):
            process.stop()
        teacher_server.stop()
        next(database, None)


def ask(proxy: Process, text: str, task: str = TASK) -> httpx.Response:
    response = httpx.post(
        proxy.url + "/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        },
        headers={"x-stillroom-task": task, "authorization": "Bearer sk-client"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response


def exchanges(engine: Engine, task: str) -> list[Exchange]:
    with Session(engine) as session:
        return list(session.exec(select(Exchange).where(Exchange.task == task)).all())


@pytest.fixture(scope="module")
def trained(cluster: Cluster) -> StudentVersion:
    """TASK after traffic through both proxies got it a published version."""
    for n in range(TRAFFIC):
        word = "alpha" if n % 2 else "beta"
        ask(cluster.proxies[n % 2], f"{word} request {n}")

    def finished() -> list[TrainingRun]:
        with Session(cluster.engine) as session:
            runs = session.exec(select(TrainingRun).where(TrainingRun.task == TASK)).all()
        return [run for run in runs if run.state in ("succeeded", "failed")]

    try:
        wait_until(lambda: bool(finished()), timeout=STARTUP_SECONDS)
    except AssertionError:
        raise AssertionError(f"no training run finished\n{cluster.logs()}") from None
    [run] = finished()
    assert run.state == "succeeded", f"{run.error}\n{cluster.logs()}"
    with Session(cluster.engine) as session:
        version = session.get(StudentVersion, run.version_id)
    assert version is not None
    assert version.state == "published", version.reason
    return version


def test_exchanges_through_both_proxies_are_stored_once_each(cluster: Cluster) -> None:
    task = "capture-check"
    sent = [f"beta capture {uuid.uuid4().hex} {n}" for n in range(40)]
    for n, text in enumerate(sent):
        ask(cluster.proxies[n % 2], text, task=task)

    wait_until(lambda: len(exchanges(cluster.engine, task)) >= len(sent), timeout=30)
    time.sleep(1.0)  # a few more flushes of both capture writers: nothing is written twice
    rows = exchanges(cluster.engine, task)
    stored = Counter(row.request["messages"][-1]["content"] for row in rows)
    assert stored == Counter(sent)
    assert len({row.id for row in rows}) == len(rows)


def test_two_distillers_train_a_task_once(cluster: Cluster, trained: StudentVersion) -> None:
    time.sleep(6.0)  # several more polls of both distillers, each seeing enough pairs
    with Session(cluster.engine) as session:
        runs = session.exec(select(TrainingRun).where(TrainingRun.task == TASK)).all()
        versions = session.exec(
            select(StudentVersion)
            .where(StudentVersion.task == TASK)
            .order_by(col(StudentVersion.number))
        ).all()
    assert [run.state for run in runs] == ["succeeded"]
    assert [version.id for version in versions] == [trained.id]
    for distiller in cluster.distillers:
        assert distiller.popen.poll() is None, distiller.output()


def test_rollout_through_one_proxy_reaches_the_other_within_two_seconds(
    cluster: Cluster, trained: StudentVersion
) -> None:
    first, second = cluster.proxies

    def served_by(proxy: Process) -> str:
        return ask(proxy, "alpha request 1").headers["x-stillroom-served-by"]

    assert served_by(second) == "teacher"
    rollout = subprocess.run(
        [STILLROOM, "rollout", TASK, "--mode", "live", "--percent", "100", "--url", first.url],
        env=base_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr
    changed = time.monotonic()
    # The student answers, or fails its gates and the teacher answers as "fallback":
    # either way the second proxy routed the request to the student.
    while (seen := served_by(second)) == "teacher":
        assert time.monotonic() - changed < 2.0, "the second proxy kept the old policy"
        time.sleep(0.05)
    assert seen in ("student", "fallback")
