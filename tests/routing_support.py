"""A task with a published student version behind a real proxy: a LoRA version on a fake
vLLM, or a classifier version on CLINC150 intents."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from core.classifier import Head
from core.settings import Settings
from core.store import create_store_engine, create_tables
from core.tables import StudentHead, StudentVersion, Task
from core.tenants import split_task_key
from distiller.datasets import clinc150_banking20
from router.policy import load_policies

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from fakes.vllm import FakeVllm, write_adapter_config
from servers import ServerThread, wait_until

TASK = "intent"
ADAPTER = "intent-v1"
SYSTEM = {"role": "system", "content": "Answer with the intent."}


@pytest.fixture
def vllm(tmp_path: Path) -> Iterator[FakeVllm]:
    fake = FakeVllm()
    fake.answers[ADAPTER] = "billing"
    fake.adapters[ADAPTER] = str(write_adapter_config(tmp_path / "adapter"))
    server = ServerThread(fake.app).start()
    fake.url = server.url
    fake.server = server  # type: ignore[attr-defined]
    yield fake
    server.stop()


def publish_version(database_url: str, *, threshold: float | None = -1.0) -> str:
    """A task whose live version is ``intent-v1`` (as the distiller leaves it)."""
    engine = create_store_engine(database_url)
    create_tables(engine)
    version_id = uuid.uuid4().hex
    with Session(engine) as session:
        session.add(Task(name=TASK, active_version_id=version_id))
        session.add(
            StudentVersion(
                id=version_id,
                task=TASK,
                number=1,
                state="published",
                base_model="tiny",
                adapter_name=ADAPTER,
                adapter_path="/adapters/intent/v1",
                metric="label",
                agreement=0.97,
                confidence_threshold=threshold,
                retained_share=0.9,
                evaluation={
                    "profile": {
                        "models": ["gpt-4o-mini"],
                        "response_formats": ["json_object", "text"],
                        "tools": False,
                        "max_prompt_chars": 200,
                    }
                },
            )
        )
        session.commit()
    engine.dispose()
    return version_id


@pytest.fixture
def routed_proxy(
    teacher: FakeTeacher,
    vllm: FakeVllm,
    sqlite_url: str,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> Callable[..., RunningProxy]:
    teacher.responder = lambda payload: "billing"

    def start(threshold: float | None = -1.0, **overrides: Any) -> RunningProxy:
        url = overrides.pop("database_url", sqlite_url)
        publish_version(url, threshold=threshold)
        values = {
            "teacher_url": teacher.url + "/v1",
            "student_url": vllm.url,
            "database_url": url,
            "policy_refresh_seconds": 0.2,
            "student_timeout_seconds": 2.0,
        }
        values.update(overrides)
        return start_proxy(make_settings(**values))

    return start


def set_policy(proxy: RunningProxy, **changes: Any) -> dict[str, Any]:
    """Change the task's policy through the admin API; return once the proxy routes by it."""
    response = httpx.patch(proxy.url + f"/admin/tasks/{TASK}", json=changes)
    assert response.status_code == 200, response.text
    wait_until(lambda: routes_by_the_store(proxy))
    body: dict[str, Any] = response.json()
    return body


def routes_by_the_store(proxy: RunningProxy) -> bool:
    """Whether the proxy's policy of the task is the one its store holds now."""
    policies = proxy.runtime.policies
    return bool(policies.get(TASK) == load_policies(proxy.engine, policies.settings).get(TASK))


def ask(proxy: RunningProxy, text: str = "my bill is wrong", **extra: Any) -> httpx.Response:
    return httpx.post(
        proxy.url + "/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": [SYSTEM, {"role": "user", "content": text}],
            **extra,
        },
        headers={"x-stillroom-task": TASK, "authorization": "Bearer sk-client"},
        timeout=10,
    )


# --- classifier students on CLINC150 intents ------------------------------------------------

INTENT_SYSTEM = {
    "role": "system",
    "content": "You route banking support messages. Answer with the customer's intent.",
}
OUT_OF_SCOPE = "Out Of Scope"


def spoken(intent: str) -> str:
    """How the teacher writes an intent (not the dataset's identifier)."""
    return intent.replace("_", " ").title()


def clinc_teacher(payload: dict[str, Any]) -> str:
    """The teacher's answer to a CLINC150 utterance: its gold intent, spoken."""
    return _clinc_answers().get(payload["messages"][-1]["content"], OUT_OF_SCOPE)


@functools.cache
def _clinc_answers() -> dict[str, str]:
    data = clinc150_banking20()
    rows = data["train"] + data["val"] + data["test"]
    return {text: spoken(intent) for text, intent in rows}


def clinc_rows(split: str, intents: list[str], per_intent: int) -> list[tuple[str, str]]:
    """(utterance, teacher answer) rows of a CLINC150 split, at most ``per_intent`` each."""
    taken: dict[str, int] = {}
    rows = []
    for text, intent in clinc150_banking20()[split]:
        if intent in intents and taken.get(intent, 0) < per_intent:
            taken[intent] = taken.get(intent, 0) + 1
            rows.append((text, spoken(intent)))
    return rows


def publish_classifier(
    database_url: str,
    head: Head,
    *,
    number: int,
    threshold: float | None,
    task: str = TASK,
    retained_share: float = 0.95,
) -> str:
    """Make a classifier version with ``head`` the live version of ``task`` (a task key:
    its tenant's, see core.tenants), as the distiller leaves it; the previous live
    version is retired."""
    engine = create_store_engine(database_url)
    create_tables(engine)
    version_id = uuid.uuid4().hex
    with Session(engine) as session:
        row = session.get(Task, task) or Task(name=task, tenant=split_task_key(task)[1])
        if row.active_version_id is not None:
            previous = session.get(StudentVersion, row.active_version_id)
            if previous is not None:
                previous.state = "retired"
        row.active_version_id = version_id
        session.add(row)
        session.add(
            StudentVersion(
                id=version_id,
                task=task,
                number=number,
                kind="classifier",
                state="published",
                base_model=head.encoder,
                adapter_name=f"{task}-v{number}",
                adapter_path=f"/heads/{task}/v{number}/head.npz",
                metric="label",
                agreement=0.97,
                confidence_threshold=threshold,
                retained_share=retained_share,
                evaluation={
                    "profile": {
                        "models": ["gpt-4o-mini"],
                        "response_formats": ["text"],
                        "tools": False,
                        "max_prompt_chars": 400,
                    }
                },
            )
        )
        session.add(StudentHead(version_id=version_id, data=head.to_bytes()))
        session.commit()
    engine.dispose()
    return version_id
