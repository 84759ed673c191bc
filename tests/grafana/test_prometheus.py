"""Every panel of the dashboards, asked of a real Prometheus that scrapes a running
stillroom: a proxy serving a task through teacher and student, in shadow and live, and the
distiller that trained and published the student and checks it for drift."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.settings import Settings
from proxy.processes.distiller_app import create_distiller_app

from conftest import RunningProxy
from dashboards_support import PanelQuery, PrometheusServer, committed_dashboards, panel_queries
from fakes.teacher import FakeTeacher, Fault
from fakes.vllm import FakeVllm
from servers import ServerThread, wait_until

TASK = "yes-no"
SYSTEM = "Answer yes for alpha requests and no for beta requests."
# What Grafana puts in place of its variables; the windows suit a 1 s scrape interval.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$task": TASK}

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]


def label_of(payload: dict[str, Any]) -> str:
    return "yes" if "alpha" in payload["messages"][-1]["content"] else "no"


@dataclass
class Stillroom:
    proxy: RunningProxy
    distiller: ServerThread
    teacher: FakeTeacher

    def ask(self, count: int, offset: int, task: str = TASK, model: str = "gpt-4o-mini") -> None:
        client = self.proxy.client()
        for n in range(offset, offset + count):
            word = "alpha" if n % 2 else "beta"
            client.chat.completions.create(
                model=model,
                messages=[
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"{word} request {n}"},
                ],
                extra_headers={"X-Stillroom-Task": task},
            )

    def ask_until_cached(self, timeout: float = 30) -> None:
        """One deterministic request, again, until the cache answers it (once the teacher's
        answer to it is stored)."""
        client = self.proxy.client()
        deadline = time.monotonic() + timeout
        while True:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                temperature=0,
                messages=[
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": "alpha"},
                ],
                extra_headers={"X-Stillroom-Task": TASK},
            )
            if raw.headers["x-stillroom-served-by"] == "cache":
                return
            assert time.monotonic() < deadline, "the cache answered nothing"
            time.sleep(0.1)

    def wait_for_mode(self, mode: str, task: str = TASK) -> None:
        """Until the proxy's policy refresh has seen the task in ``mode``."""

        def seen() -> bool:
            text = httpx.get(self.proxy.url + "/metrics").text
            return any(
                sample.labels == {"task": task, "mode": mode} and sample.value == 1
                for family in text_string_to_metric_families(text)
                if family.name == "stillroom_task_mode"
                for sample in family.samples
            )

        wait_until(seen)

    def scored(self, kind: str, task: str = TASK) -> float:
        """Student answers of ``kind`` (shadow, audit) the proxy has scored so far."""
        text = httpx.get(self.proxy.url + "/metrics").text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "stillroom_scored_pairs"
            for sample in family.samples
            if sample.name.endswith("_total")
            and sample.labels.get("task") == task
            and sample.labels.get("kind") == kind
        )

    def ask_until_scored(self, kind: str, count: int, offset: int, timeout: float = 120) -> None:
        """Ask ``count`` requests, then more, until some are scored as ``kind`` (a student
        server that is still busy after training may miss the first ones)."""
        self.ask(count, offset=offset)
        deadline = time.monotonic() + timeout
        while not self.scored(kind):
            assert time.monotonic() < deadline, f"no {kind} pair was scored"
            offset += count
            self.ask(10, offset=offset)
            time.sleep(0.5)

    def admin(self, method: str, path: str, **options: Any) -> Any:
        response = httpx.request(method, self.proxy.url + path, timeout=30, **options)
        assert response.status_code < 400, response.text
        return response.json()


@pytest.fixture
def stillroom(
    teacher: FakeTeacher,
    tiny_model: Path,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Stillroom]:
    """A proxy and a distiller on one store; the student server is a fake vLLM whose
    adapters answer "yes" (half the teacher's answers)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    teacher.responder = label_of
    vllm = FakeVllm()
    vllm.default_answer = "yes"
    student_server = ServerThread(vllm.app).start()
    vllm.url = student_server.url
    settings = make_settings(
        teacher_url=teacher.url + "/v1",
        student_backend="vllm",
        student_url=vllm.url,
        base_model=str(tiny_model),
        train_min_pairs=20,
        heldout_percent=40,  # enough held-out pairs to show the target (a lower bound)
        distill_first_pairs=100_000,  # trained when asked
        lora_epochs=4,
        lora_learning_rate=5e-3,
        target_agreement=0.8,  # what 40 held-out pairs can show (a lower bound)
        publish_min_share=0.2,
        policy_refresh_seconds=0.2,
        cache_seconds=600,
        difficulty_gate=False,
        drift_check_seconds=1,
        drift_min_samples=5,
        drift_agreement_floor=0.01,  # scored, never stepped down
        drift_input_ratio=1000,
    )
    distiller = ServerThread(create_distiller_app(settings)).start()
    proxy = start_proxy(settings)
    yield Stillroom(proxy=proxy, distiller=distiller, teacher=teacher)
    distiller.stop()
    student_server.stop()


def exercise(stillroom: Stillroom) -> None:
    """Teacher traffic, errors and an unpriced model, and a request the cache answers; a
    trained and published student; shadow, then live with every student answer audited."""
    stillroom.ask(100, offset=0)
    stillroom.ask_until_cached()
    stillroom.ask(1, offset=0, task="unpriced", model="an-unpriced-model")
    for _ in range(2):
        stillroom.teacher.faults.append(Fault(status=500))
        with pytest.raises(openai.InternalServerError):
            stillroom.ask(1, offset=0)
    wait_until(
        lambda: stillroom.admin("GET", f"/admin/tasks/{TASK}")["exchanges"]["total"] >= 100,
        timeout=60,
    )

    run_id = stillroom.admin("POST", f"/admin/tasks/{TASK}/train")["id"]
    deadline = time.monotonic() + 600
    while (run := stillroom.admin("GET", f"/admin/tasks/{TASK}/runs/{run_id}"))["state"] not in (
        "succeeded",
        "failed",
    ):
        assert time.monotonic() < deadline, "the training run did not finish"
        time.sleep(1)
    assert run["state"] == "succeeded", run["error"]
    versions = stillroom.admin("GET", f"/admin/tasks/{TASK}/versions")["data"]
    assert any(v["state"] == "published" for v in versions), versions

    stillroom.admin("PATCH", f"/admin/tasks/{TASK}", json={"mode": "shadow", "shadow_percent": 100})
    stillroom.wait_for_mode("shadow")
    stillroom.ask_until_scored("shadow", 20, offset=200)
    stillroom.admin(
        "PATCH",
        f"/admin/tasks/{TASK}",
        json={
            "mode": "live",
            "cutover_percent": 50,
            "audit_percent": 100,
            "confidence_threshold": -1000,
        },
    )
    stillroom.wait_for_mode("live")
    stillroom.ask_until_scored("audit", 40, offset=300)


def substitute(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def first_value(prometheus: PrometheusServer, expr: str, **labels: str) -> float:
    for sample in prometheus.query(substitute(expr))["data"]["result"]:
        if all(sample["metric"].get(k) == v for k, v in labels.items()):
            return float(sample["value"][1])
    raise AssertionError(f"no sample with {labels} for {expr}")


def test_every_panel_query_parses_and_returns_data(
    stillroom: Stillroom, start_prometheus: Callable[[dict[str, str]], PrometheusServer]
) -> None:
    proxy_address = stillroom.proxy.url.removeprefix("http://")
    distiller_address = stillroom.distiller.url.removeprefix("http://")
    prometheus = start_prometheus(
        {"stillroom-proxy": proxy_address, "stillroom-distiller": distiller_address}
    )
    wait_until(prometheus.targets_up, timeout=60)

    exercise(stillroom)

    queries = panel_queries(committed_dashboards())
    assert len(queries) > 40
    waiting: list[PanelQuery] = list(queries)

    def all_answered() -> bool:
        for query in list(waiting):
            answer = prometheus.query(substitute(query.expr))
            assert answer["status"] == "success", f"{query}\n{answer.get('error')}"
            if answer["data"]["result"]:
                waiting.remove(query)
        return not waiting

    try:
        wait_until(all_answered, timeout=180)
    except AssertionError:
        raise AssertionError(
            "panels without data:\n" + "\n".join(str(q) for q in waiting)
        ) from None

    by_title = {(q.dashboard, q.panel): q.expr for q in queries}
    saved = by_title[("stillroom: overview", "Saved")]
    assert first_value(prometheus, saved) > 0
    share = by_title[("stillroom: task", "Served by the student")]
    assert 0 < first_value(prometheus, share) < 1
    mode = by_title[("stillroom: task", "Mode")]
    assert [s["metric"]["mode"] for s in prometheus.query(substitute(mode))["data"]["result"]] == [
        "live"
    ]
    runs = by_title[("stillroom: task", "Training runs")]
    assert first_value(prometheus, runs, outcome="published") > 0
