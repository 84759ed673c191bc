"""An app on the Responses API, or on the Anthropic SDK, gets the whole product: its
traffic is captured, a task is trained on it without anyone asking, and once live the
student answers in that API's own shape. Real servers: the proxy with its distiller, a
fake teacher per dialect; the `openai` and `anthropic` SDKs as the apps."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from sqlmodel import Session, select

from core.settings import Settings
from core.tables import Exchange

from conftest import RunningProxy
from fakes.anthropic import FakeAnthropic
from fakes.teacher import FakeTeacher
from routing_support import INTENT_SYSTEM, clinc_rows, clinc_teacher, spoken
from servers import ServerThread, wait_until

INTENTS = ["bill_balance", "card_declined", "report_lost_card", "transfer", "pin_change"]
PAIRS_PER_INTENT = 40
INSTRUCTIONS = INTENT_SYSTEM["content"]

# One app per dialect: (utterance) -> (who served it, the answer's text), through its SDK.
Ask = Callable[[str], tuple[str, str]]


@pytest.fixture
def claude() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    fake.responder = clinc_teacher
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


@pytest.fixture
def distilling_proxy(
    teacher: FakeTeacher,
    claude: FakeAnthropic,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> RunningProxy:
    teacher.responder = clinc_teacher
    settings = make_settings(
        teacher_url=teacher.url + "/v1",
        anthropic_url=claude.url,
        student_kinds=["classifier"],
        distill_first_pairs=len(INTENTS) * PAIRS_PER_INTENT,
        distill_interval_seconds=1,
        train_min_pairs=20,
        policy_refresh_seconds=0.2,
    )
    return start_proxy(settings, distiller=True)


def responses_app(proxy: RunningProxy, task: str) -> Ask:
    client = proxy.client()

    def ask(text: str) -> tuple[str, str]:
        raw = client.responses.with_raw_response.create(
            model="gpt-4o-mini",
            instructions=INSTRUCTIONS,
            input=text,
            extra_headers={"X-Stillroom-Task": task},
        )
        return raw.headers["x-stillroom-served-by"], raw.parse().output_text

    return ask


def messages_app(proxy: RunningProxy, task: str) -> Ask:
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-client", max_retries=0)

    def ask(text: str) -> tuple[str, str]:
        raw = client.messages.with_raw_response.create(
            model="claude-haiku-4-5",
            max_tokens=16,
            system=INSTRUCTIONS,
            messages=[{"role": "user", "content": text}],
            extra_headers={"X-Stillroom-Task": task},
        )
        message = raw.parse()
        assert (message.type, message.role) == ("message", "assistant")
        text_blocks = [block.text for block in message.content if block.type == "text"]
        return raw.headers["x-stillroom-served-by"], "".join(text_blocks)

    return ask


APPS = {"responses": responses_app, "messages": messages_app}


def admin(proxy: RunningProxy, method: str, path: str, **body: Any) -> Any:
    response = httpx.request(method, proxy.url + path, json=body or None, timeout=60)
    assert response.status_code < 400, response.text
    return response.json()


def published_version(proxy: RunningProxy, task: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = admin(proxy, "GET", f"/admin/tasks/{task}/runs")["data"]
        if runs and runs[-1]["state"] in ("succeeded", "failed"):
            assert runs[-1]["state"] == "succeeded", runs[-1]["error"]
            [version] = admin(proxy, "GET", f"/admin/tasks/{task}/versions")["data"]
            return dict(version)
        time.sleep(1)
    raise AssertionError("no training run finished")


@pytest.mark.parametrize("dialect", sorted(APPS))
def test_an_apps_traffic_in_its_own_api_trains_a_student_that_answers_in_that_api(
    dialect: str, distilling_proxy: RunningProxy
) -> None:
    proxy, task = distilling_proxy, f"intents-{dialect}"
    ask = APPS[dialect](proxy, task)
    for text, answer in clinc_rows("train", INTENTS, PAIRS_PER_INTENT):
        assert ask(text) == ("teacher", answer)

    version = published_version(proxy, task)
    assert (version["kind"], version["state"]) == ("classifier", "published")
    with Session(proxy.engine) as session:
        stored = session.exec(select(Exchange).where(Exchange.task == task)).all()
    assert {exchange.dialect for exchange in stored} == {dialect}
    assert all(exchange.client_request is not None for exchange in stored)

    admin(proxy, "PATCH", f"/admin/tasks/{task}", mode="live", cutover_percent=100, audit_percent=0)
    wait_until(lambda: proxy.runtime.policies.get(task).mode == "live", timeout=30)
    new_traffic = clinc_rows("test", INTENTS, 6)
    answered = [(ask(text), answer) for text, answer in new_traffic]
    on_student = [(given, answer) for (served, given), answer in answered if served == "student"]
    assert len(on_student) >= 0.7 * len(new_traffic)
    assert {given for given, _ in on_student} <= {spoken(intent) for intent in INTENTS}
    assert sum(given == answer for given, answer in on_student) >= 0.9 * len(on_student)
