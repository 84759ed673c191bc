"""A label task, end to end: CLINC150 intent traffic through the proxy is distilled into both
kinds of student without anyone asking, the classifier wins the tournament and is
published, and in live it answers inside the proxy in the teacher's exact words, leaving
what it is unsure of to the teacher. Real servers: the proxy with its distiller, the
embedded student server on a tiny Llama (the LoRA side), a fake teacher; the `openai` SDK
and the `stillroom` CLI as clients."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.settings import Settings
from distiller.datasets import clinc150_banking20
from distiller.student_server import create_student_app

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from routing_support import INTENT_SYSTEM, OUT_OF_SCOPE, clinc_rows, clinc_teacher, spoken
from servers import ServerThread, wait_until

TASK = "banking-intents"
INTENTS = clinc150_banking20()["intents"][:10]
PAIRS_PER_INTENT = 40
STILLROOM = str(Path(sys.executable).with_name("stillroom"))


class CountingApp:
    """An ASGI app that counts the paths it is asked for, then hands on."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: Counter[str] = Counter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths[scope["path"]] += 1
        await self.app(scope, receive, send)


@pytest.fixture
def student_server(tiny_model: Path) -> Iterator[tuple[ServerThread, CountingApp]]:
    app = CountingApp(create_student_app(base_model=str(tiny_model)))
    server = ServerThread(app).start()
    yield server, app
    server.stop()


@pytest.fixture
def distilling_proxy(
    teacher: FakeTeacher,
    tiny_model: Path,
    student_server: tuple[ServerThread, CountingApp],
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> RunningProxy:
    teacher.responder = clinc_teacher
    settings = make_settings(
        teacher_url=teacher.url + "/v1",
        student_url=student_server[0].url,
        base_model=str(tiny_model),
        distill_first_pairs=len(INTENTS) * PAIRS_PER_INTENT,
        distill_interval_seconds=1,
        train_min_pairs=20,
        lora_epochs=1,
        policy_refresh_seconds=0.2,
    )
    return start_proxy(settings, distiller=True)


def admin(proxy: RunningProxy, method: str, path: str, **body: Any) -> Any:
    response = httpx.request(method, proxy.url + path, json=body or None, timeout=60)
    assert response.status_code < 400, response.text
    return response.json()


def ask(proxy: RunningProxy, text: str) -> tuple[str, str]:
    """Who served the utterance, and the answer (through the `openai` SDK)."""
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[INTENT_SYSTEM, {"role": "user", "content": text}],  # type: ignore[list-item]
        extra_headers={"X-Stillroom-Task": TASK},
    )
    return raw.headers["x-stillroom-served-by"], raw.parse().choices[0].message.content or ""


def cli(proxy: RunningProxy, *args: str) -> str:
    env = {**os.environ, "STILLROOM_URL": proxy.url, "COLUMNS": "400"}
    done = subprocess.run([STILLROOM, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def wait_for_training(proxy: RunningProxy, timeout: float = 420) -> list[dict[str, Any]]:
    """The task's versions once its first (scheduled) training run has finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = admin(proxy, "GET", f"/admin/tasks/{TASK}/runs")["data"]
        if runs and runs[-1]["state"] in ("succeeded", "failed"):
            assert runs[-1]["state"] == "succeeded", runs[-1]["error"]
            data: list[dict[str, Any]] = admin(proxy, "GET", f"/admin/tasks/{TASK}/versions")[
                "data"
            ]
            return data
        time.sleep(1)
    raise AssertionError("no training run finished")


def test_label_traffic_is_distilled_published_and_served_by_a_classifier(
    distilling_proxy: RunningProxy,
    student_server: tuple[ServerThread, CountingApp],
    teacher: FakeTeacher,
) -> None:
    proxy = distilling_proxy
    for text, _ in clinc_rows("train", INTENTS, PAIRS_PER_INTENT):
        assert ask(proxy, text)[0] == "teacher"

    classifier, lora = wait_for_training(proxy)
    [run] = admin(proxy, "GET", f"/admin/tasks/{TASK}/runs")["data"]
    assert run["trigger"] == "schedule"
    assert (classifier["kind"], classifier["state"]) == ("classifier", "published")
    assert (lora["kind"], lora["state"]) == ("lora", "rejected")
    assert lora["reason"].startswith("lost the tournament to v1 (classifier)")
    assert classifier["retained_share"] >= 0.9
    summary = admin(proxy, "GET", f"/admin/tasks/{TASK}")
    assert (summary["shape"], summary["label_count"]) == ("label", len(INTENTS))
    assert summary["active_version"]["id"] == classifier["id"]

    listed = cli(proxy, "versions", TASK)
    for shown in ("classifier", "lora", "published", "rejected", "lost the tournament"):
        assert shown in listed
    assert "label (10)" in cli(proxy, "tasks")

    admin(proxy, "PATCH", f"/admin/tasks/{TASK}", mode="live", cutover_percent=100, audit_percent=0)
    wait_until(lambda: proxy.runtime.policies.get(TASK).mode == "live", timeout=30)
    teacher.requests.clear()
    new_traffic = clinc_rows("test", INTENTS, 5)
    answered = [(ask(proxy, text), answer) for text, answer in new_traffic]
    on_student = [(given, answer) for (served, given), answer in answered if served == "student"]
    assert len(on_student) >= 0.8 * len(new_traffic)
    assert {given for given, _ in on_student} <= {spoken(i) for i in INTENTS}
    assert sum(given == answer for given, answer in on_student) >= 0.9 * len(on_student)
    assert len(teacher.chat_requests()) == len(new_traffic) - len(on_student)

    out_of_scope = [ask(proxy, text) for text in clinc150_banking20()["oos"][:20]]
    escalated = [given for served, given in out_of_scope if served == "fallback"]
    assert len(escalated) >= 15
    assert set(escalated) == {OUT_OF_SCOPE}

    assert student_server[1].paths["/v1/chat/completions"] == 0, "the classifier needs no hop"

    chosen = admin(proxy, "POST", f"/admin/tasks/{TASK}/versions/v2/publish")
    assert (chosen["kind"], chosen["state"]) == ("lora", "published")
    assert admin(proxy, "GET", f"/admin/tasks/{TASK}")["active_version"]["kind"] == "lora"
    assert "v1 is live again" in cli(proxy, "rollback", TASK)
    assert admin(proxy, "GET", f"/admin/tasks/{TASK}")["active_version"]["kind"] == "classifier"
