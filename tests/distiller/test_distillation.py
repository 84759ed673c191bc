"""Distillation end to end: traffic through the proxy becomes a published student version
that the student server answers as, and that can be rolled back. Real servers: the proxy
with its distiller, the embedded student server on a tiny Llama, a fake teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from core.settings import Settings
from distiller.student_server import create_student_app

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from servers import ServerThread

TASK = "yes-no"
STILLROOM = str(Path(sys.executable).with_name("stillroom"))
SYSTEM = "Answer yes for alpha requests and no for beta requests."


def label_of(payload: dict[str, Any]) -> str:
    return "yes" if "alpha" in payload["messages"][-1]["content"] else "no"


@pytest.fixture
def student_server(tiny_model: Path) -> Iterator[ServerThread]:
    server = ServerThread(create_student_app(base_model=str(tiny_model))).start()
    yield server
    server.stop()


@pytest.fixture
def distilling_proxy(
    teacher: FakeTeacher,
    tiny_model: Path,
    student_server: ServerThread,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> Callable[..., RunningProxy]:
    teacher.responder = label_of

    def start(**overrides: Any) -> RunningProxy:
        values: dict[str, Any] = {
            "teacher_url": teacher.url + "/v1",
            "student_url": student_server.url,
            "base_model": str(tiny_model),
            "train_min_pairs": 20,
            "heldout_percent": 25,
            "distill_first_pairs": 100_000,
            "lora_epochs": 4,
            "lora_learning_rate": 5e-3,
            "target_agreement": 0.8,  # what 25-40 held-out pairs can show (a lower bound)
            "publish_min_share": 0.2,
            "student_kinds": ["lora"],  # the LoRA path; tests/router has the classifier's
        }
        values.update(overrides)
        return start_proxy(make_settings(**values), distiller=True)

    return start


def send_traffic(proxy: RunningProxy, count: int, offset: int = 0) -> None:
    client = proxy.client()
    for n in range(offset, offset + count):
        word = "alpha" if n % 2 else "beta"
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{word} request {n}"},
            ],
            extra_headers={"X-Stillroom-Task": TASK},
        )


def admin(proxy: RunningProxy, method: str, path: str) -> Any:
    response = httpx.request(method, proxy.url + path, timeout=30)
    assert response.status_code < 400, response.text
    return response.json()


def wait_for_run(proxy: RunningProxy, run_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run: dict[str, Any] = admin(proxy, "GET", f"/admin/tasks/{TASK}/runs/{run_id}")
        if run["state"] in ("succeeded", "failed"):
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish")


def exchanges_stored(proxy: RunningProxy, count: int) -> None:
    deadline = time.monotonic() + 10
    while admin(proxy, "GET", f"/admin/tasks/{TASK}")["exchanges"]["total"] < count:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_trained_version_is_published_served_and_rolled_back(
    distilling_proxy: Callable[..., RunningProxy], student_server: ServerThread
) -> None:
    proxy = distilling_proxy()
    send_traffic(proxy, 120)
    exchanges_stored(proxy, 120)

    first = wait_for_run(proxy, admin(proxy, "POST", f"/admin/tasks/{TASK}/train")["id"])
    assert first["state"] == "succeeded", first["error"]
    assert first["curation"]["shape"] == "label"
    [v1] = admin(proxy, "GET", f"/admin/tasks/{TASK}/versions")["data"]
    assert v1["state"] == "published", v1["reason"]
    assert v1["agreement"] > v1["base_agreement"]
    assert v1["retained_agreement"] >= 0.9
    assert admin(proxy, "GET", f"/admin/tasks/{TASK}")["active_version"]["id"] == v1["id"]

    with openai.OpenAI(base_url=student_server.url + "/v1", api_key="-") as student:
        answers = [
            student.chat.completions.create(
                model=v1["adapter_name"],
                messages=[
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"{word} request {900 + n}"},
                ],
                max_tokens=4,
            )
            .choices[0]
            .message.content
            for n, word in enumerate(["alpha", "beta"] * 3)
        ]
    assert sum(a.strip() == w for a, w in zip(answers, ["yes", "no"] * 3, strict=True)) >= 5

    send_traffic(proxy, 40, offset=1000)
    exchanges_stored(proxy, 160)
    second = wait_for_run(proxy, admin(proxy, "POST", f"/admin/tasks/{TASK}/train")["id"])
    assert second["state"] == "succeeded", second["error"]
    v1_now, v2 = admin(proxy, "GET", f"/admin/tasks/{TASK}/versions")["data"]
    assert v2["state"] == "published", v2["reason"]
    assert v1_now["state"] == "retired"

    rolled = admin(proxy, "POST", f"/admin/tasks/{TASK}/rollback")
    assert rolled["id"] == v1["id"]
    states = [v["state"] for v in admin(proxy, "GET", f"/admin/tasks/{TASK}/versions")["data"]]
    assert states == ["published", "retired"]
    assert admin(proxy, "GET", f"/admin/tasks/{TASK}")["active_version"]["number"] == 1


def test_too_few_pairs_fail_with_a_clear_message_and_train_nothing(
    distilling_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = distilling_proxy(train_min_pairs=500)
    send_traffic(proxy, 30)
    exchanges_stored(proxy, 30)
    run = wait_for_run(proxy, admin(proxy, "POST", f"/admin/tasks/{TASK}/train")["id"])
    assert run["state"] == "failed"
    assert "training needs at least 500" in run["error"]
    assert admin(proxy, "GET", f"/admin/tasks/{TASK}/versions")["data"] == []


def test_enough_traffic_gets_a_version_without_anyone_asking(
    distilling_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = distilling_proxy(distill_first_pairs=80, distill_interval_seconds=1)
    send_traffic(proxy, 80)
    deadline = time.monotonic() + 240
    while not admin(proxy, "GET", f"/admin/tasks/{TASK}/versions")["data"]:
        assert time.monotonic() < deadline, "no version was trained"
        time.sleep(1)
    [run] = admin(proxy, "GET", f"/admin/tasks/{TASK}/runs")["data"]
    assert run["trigger"] == "schedule"
    run = wait_for_run(proxy, run["id"])
    assert run["state"] == "succeeded", run["error"]


def test_cli_trains_with_progress_lists_versions_and_exports(
    distilling_proxy: Callable[..., RunningProxy], tmp_path: Path
) -> None:
    proxy = distilling_proxy()
    send_traffic(proxy, 100)
    exchanges_stored(proxy, 100)
    env = {**os.environ, "STILLROOM_URL": proxy.url, "COLUMNS": "200"}

    trained = subprocess.run(
        [STILLROOM, "train", TASK, "--wait"], env=env, capture_output=True, text=True, timeout=300
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "v1 published" in trained.stdout

    listed = subprocess.run(
        [STILLROOM, "versions", TASK], env=env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0
    assert "published" in listed.stdout

    out = tmp_path / "pairs.jsonl"
    exported = subprocess.run(
        [STILLROOM, "export", TASK, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert exported.returncode == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 100
    assert all(line["messages"][-1]["role"] == "assistant" for line in lines)
    assert {line["messages"][-1]["content"] for line in lines} == {"yes", "no"}

    unknown = subprocess.run(
        [STILLROOM, "train", "no-such-task"], env=env, capture_output=True, text=True, timeout=60
    )
    assert unknown.returncode == 1
    assert "unknown task" in unknown.stdout
