"""An extraction task, end to end: json_object traffic through the proxy is read as
extractor-shaped, distilled into an extractor without anyone asking, published, and in
live it answers inside the proxy; rollback and drift work for it as for any kind. Real
servers: the proxy with its distiller, a fake extraction teacher; the `openai` SDK and the
admin API as clients."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from core.embedding import Encoder
from core.metrics import Metrics
from core.settings import Settings
from core.tables import ShadowResult, StudentHead, StudentVersion, Task
from router.drift import DriftMonitor

from conftest import RunningProxy
from fakes.extraction import SLOTS, ExtractionTeacher, messages, rows
from servers import ServerThread, wait_until

TASK = "voice-parser"


@pytest.fixture
def extraction_teacher() -> Iterator[ExtractionTeacher]:
    fake = ExtractionTeacher()
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


@pytest.fixture
def distilling_proxy(
    extraction_teacher: ExtractionTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> RunningProxy:
    settings = make_settings(
        teacher_url=extraction_teacher.url + "/v1",
        student_url="http://127.0.0.1:9",
        student_kinds=["extractor"],  # the LoRA side of a tournament is tests/distiller's
        distill_first_pairs=160,
        distill_interval_seconds=1,
        train_min_pairs=20,
        heldout_percent=40,
        target_agreement=0.75,
        publish_min_share=0.2,
        policy_refresh_seconds=0.2,
    )
    return start_proxy(settings, distiller=True)


def admin(proxy: RunningProxy, method: str, path: str, **body: Any) -> Any:
    response = httpx.request(method, proxy.url + path, json=body or None, timeout=60)
    assert response.status_code < 400, response.text
    return response.json()


def ask(proxy: RunningProxy, text: str) -> tuple[str, dict[str, Any]]:
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=messages(text),  # type: ignore[arg-type]
        response_format={"type": "json_object"},
        extra_headers={"X-Stillroom-Task": TASK},
    )
    content = raw.parse().choices[0].message.content or "{}"
    return raw.headers["x-stillroom-served-by"], json.loads(content)


def wait_for_training(proxy: RunningProxy, runs: int = 1, timeout: float = 600) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = admin(proxy, "GET", f"/admin/tasks/{TASK}/runs")["data"]
        done = [r for r in found if r["state"] in ("succeeded", "failed")]
        if len(done) >= runs:
            assert done[-1]["state"] == "succeeded", done[-1]["error"]
            versions: list[Any] = admin(proxy, "GET", f"/admin/tasks/{TASK}/versions")["data"]
            return versions
        time.sleep(1)
    raise AssertionError("no training run finished")


def test_an_extraction_task_is_distilled_served_rolled_back_and_stepped_down_on_drift(
    distilling_proxy: RunningProxy, extraction_teacher: ExtractionTeacher
) -> None:
    """One training run (the costly part) and everything that follows it for the new
    kind: publishing, serving, rollback, drift."""
    proxy = distilling_proxy
    for row in rows("train", 80):
        assert ask(proxy, row["text"])[0] == "teacher"

    [version] = wait_for_training(proxy)
    assert (version["kind"], version["state"]) == ("extractor", "published"), version["reason"]
    summary = admin(proxy, "GET", f"/admin/tasks/{TASK}")
    assert summary["shape"] == "json"
    fields = summary["field_kinds"]
    assert fields["extractor"] is True
    assert {name: f["kind"] for name, f in fields["fields"].items()} == {
        "intent": "label",
        **dict.fromkeys(SLOTS, "span"),
    }
    [run] = admin(proxy, "GET", f"/admin/tasks/{TASK}/runs")["data"]
    assert run["total_steps"]
    assert run["step"] == run["total_steps"]

    live(proxy)
    extraction_teacher.requests.clear()
    new_traffic = rows("validate", 20)
    answered = [(ask(proxy, row["text"]), row) for row in new_traffic]
    served = [given for (by, given), _ in answered if by == "student"]
    assert len(served) >= 0.2 * len(new_traffic)
    assert len(extraction_teacher.requests) == len(new_traffic) - len(served)
    for (by, given), row in answered:
        if by == "student":
            assert all(given[slot] in row["text"] for slot in SLOTS if slot in given)

    second = retrained_copy(proxy, version["id"])
    admin(proxy, "POST", f"/admin/tasks/{TASK}/versions/v{second}/publish")
    assert admin(proxy, "GET", f"/admin/tasks/{TASK}")["active_version"]["number"] == second
    # The proxy reads policies from the store every 0.2 s: wait for this one to take
    # effect, or a refresh that read it could land after the rollback's.
    wait_until(lambda: proxy.runtime.policies.get(TASK).student.number == second, timeout=30)
    rolled = admin(proxy, "POST", f"/admin/tasks/{TASK}/rollback")
    assert (rolled["number"], rolled["kind"]) == (1, "extractor")
    live(proxy)
    wait_until(lambda: proxy.runtime.policies.get(TASK).student.number == 1, timeout=30)
    text = next(row["text"] for (by, _), row in answered if by == "student")
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=messages(text),  # type: ignore[arg-type]
        response_format={"type": "json_object"},
        extra_headers={"X-Stillroom-Task": TASK},
    )
    assert raw.headers["x-stillroom-student-version"] == "v1"

    disagree(proxy, version["id"], proxy.settings.drift_min_samples)
    report = DriftMonitor(proxy.engine, Encoder(), proxy.settings, Metrics()).check(TASK)
    assert report is not None
    assert report.action == "stepped_down"
    with Session(proxy.engine) as session:
        task = session.get(Task, TASK)
        assert task is not None
        assert task.mode == "shadow"


def live(proxy: RunningProxy) -> None:
    admin(proxy, "PATCH", f"/admin/tasks/{TASK}", mode="live", cutover_percent=100, audit_percent=0)
    wait_until(lambda: proxy.runtime.policies.get(TASK).mode == "live", timeout=30)


def retrained_copy(proxy: RunningProxy, version_id: str) -> int:
    """A second, rejected version of the task with the first one's model (what a later
    training run leaves when it loses the gate); its number."""
    with Session(proxy.engine) as session:
        first = session.get(StudentVersion, version_id)
        head = session.get(StudentHead, version_id)
        assert first is not None
        assert head is not None
        copy = StudentVersion.model_validate(
            {**first.model_dump(), "id": uuid.uuid4().hex, "number": 2, "state": "rejected"}
        )
        session.add(copy)
        session.add(StudentHead(version_id=copy.id, data=head.data))
        session.commit()
        return copy.number


def disagree(proxy: RunningProxy, version_id: str, pairs: int) -> None:
    """Audits of the live version that all disagree with the teacher."""
    with Session(proxy.engine) as session:
        for _ in range(pairs):
            session.add(
                ShadowResult(
                    id=uuid.uuid4().hex,
                    task=TASK,
                    version_id=version_id,
                    kind="audit",
                    input_text="user: weather in rome",
                    agrees=False,
                    score=0.0,
                    confidence=-0.1,
                    student_answer='{"intent": "GetWeather"}',
                    teacher_answer='{"intent": "GetWeather", "city": "Rome"}',
                )
            )
        session.commit()
