"""Two teams behind one stillroom, each with its own key, both sending
``X-Stillroom-Task: ticket-triage``: two tasks, each trained on its own team's exchanges
only and answered by its own student only. Real proxy on SQLite and Postgres, a real
classifier head on MiniLM, the fake teacher, httpx, the anthropic SDK and the CLI as
clients."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from core.classifier import BUNDLED_ENCODER, Head
from core.embedding import Encoder
from core.profile import prompt_key
from core.settings import Settings
from core.store import create_store_engine, create_tables
from core.tables import Exchange, Task
from core.tenants import key_hash, split_task_key, task_key, unnamed_tenant
from distiller.backends import HttpStudentBackend, StudentReplicas
from distiller.classifier import train_classifier
from distiller.curation import Example, curate
from distiller.datasets import clinc150_banking20
from distiller.pipeline import Pipeline
from proxy.gateway.tenancy import warn_of_stranded_students
from proxy.processes.environment import settings_environment

from conftest import RunningProxy, postgres_database
from fakes.anthropic import FakeAnthropic
from fakes.teacher import FakeTeacher
from routing_support import INTENT_SYSTEM, clinc_rows, clinc_teacher, publish_classifier
from servers import ServerThread, stored_exchanges, wait_until

TASK = "ticket-triage"
KEY_A, KEY_B = "sk-team-a", "sk-team-b"
TENANT_A, TENANT_B = unnamed_tenant(key_hash(KEY_A)), unnamed_tenant(key_hash(KEY_B))
TASK_A, TASK_B = task_key(TASK, TENANT_A), task_key(TASK, TENANT_B)
INTENTS = clinc150_banking20()["intents"][:4]
TEXTS = [text for text, _ in clinc_rows("train", INTENTS, 2)]  # both teams ask these
STILLROOM = str(Path(sys.executable).with_name("stillroom"))


@pytest.fixture(scope="module")
def head() -> Head:
    """A classifier head on MiniLM for the intents both teams ask about."""
    examples = []
    for text, answer in clinc_rows("train", INTENTS, 12):
        messages = [INTENT_SYSTEM, {"role": "user", "content": text}]
        examples.append(Example(uuid.uuid4().hex, messages, answer, prompt_key(messages)))
    return train_classifier(examples, embed=Encoder().encode, encoder=BUNDLED_ENCODER).head


def publish_head(engine: Engine, key: str, head: Head) -> str:
    """Make a classifier version with ``head`` the live version of task ``key``, answering
    at a probability of one half or more."""
    url = engine.url.render_as_string(hide_password=False)
    return publish_classifier(
        url, head, number=1, threshold=math.log(0.5), task=key, retained_share=1.0
    )


def ask(proxy: RunningProxy, key: str | None, text: str, task: str = TASK) -> httpx.Response:
    headers = {"x-stillroom-task": task}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    response = httpx.post(
        proxy.url + "/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": [INTENT_SYSTEM, {"role": "user", "content": text}],
        },
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def admin(proxy: RunningProxy, method: str, path: str, **body: Any) -> httpx.Response:
    return httpx.request(method, proxy.url + path, json=body or None, timeout=30)


def tasks_in_store(engine: Engine) -> dict[str, str]:
    with Session(engine) as session:
        return {task.name: task.tenant for task in session.exec(select(Task)).all()}


@pytest.fixture
def start_tenants_proxy(
    teacher: FakeTeacher,
    database_url: str,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> Callable[..., RunningProxy]:
    """A proxy telling tenants apart by key, in front of the fake teacher."""
    teacher.responder = clinc_teacher

    def start(**overrides: Any) -> RunningProxy:
        return start_proxy(make_settings(**tenancy_settings(teacher.url, database_url, overrides)))

    return start


def tenancy_settings(teacher_url: str, database_url: str, overrides: dict[str, Any]) -> Any:
    values: dict[str, Any] = {
        "teacher_url": teacher_url + "/v1",
        "database_url": database_url,
        "tenancy": "key",
        "student_url": "http://127.0.0.1:9",  # classifiers answer inside the proxy
        "policy_refresh_seconds": 0.2,
        "difficulty_gate": False,
    }
    return {**values, **overrides}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def team_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One store per module and kind, SQLite and Postgres: the two teams' proxy is started
    once for the tests that read what their traffic left (each names its own tasks)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('tenants') / 'stillroom.db'}"
    else:
        yield from postgres_database()


@pytest.fixture(scope="module")
def team_teacher() -> Iterator[FakeTeacher]:
    fake = FakeTeacher()
    fake.responder = clinc_teacher
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


@pytest.fixture(scope="module")
def team_claude() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


@pytest.fixture(scope="module")
def two_teams(
    team_store: str,
    team_teacher: FakeTeacher,
    team_claude: FakeAnthropic,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningProxy]:
    """The proxy after both teams asked it the same questions under the same task name."""
    overrides = {
        "anthropic_url": team_claude.url,
        "data_dir": tmp_path_factory.mktemp("data"),
        "capture_flush_seconds": 0.05,
    }
    proxy = RunningProxy(Settings(**tenancy_settings(team_teacher.url, team_store, overrides)))
    try:
        for text in TEXTS:
            ask(proxy, KEY_A, text)
            ask(proxy, KEY_B, text)
        stored_exchanges(proxy.engine, 2 * len(TEXTS))
        yield proxy
    finally:
        proxy.stop()


def exchange_ids(engine: Engine, key: str, task: str) -> set[str]:
    """The ids of ``task``'s exchanges made with ``key`` that the teacher answered."""
    with Session(engine) as session:
        rows = session.exec(
            select(Exchange).where(
                Exchange.task == task,
                Exchange.client_key_hash == key_hash(key),
                Exchange.served_by == "teacher",
            )
        )
        return {row.id for row in rows}


def go_live(proxy: RunningProxy, key: str) -> None:
    """Put task ``key`` live at 100% through the admin API (by name and ``?tenant=``);
    return once the proxy routes by it."""
    name, tenant = split_task_key(key)
    response = admin(
        proxy,
        "PATCH",
        f"/admin/tasks/{name}?tenant={tenant}",
        mode="live",
        cutover_percent=100,
        audit_percent=0,
    )
    assert response.status_code == 200, response.text
    wait_until(lambda: proxy.runtime.policies.get(key).routable, timeout=30)


def test_one_task_name_sent_with_two_keys_is_two_tasks(two_teams: RunningProxy) -> None:
    named = {k: t for k, t in tasks_in_store(two_teams.engine).items() if k.startswith(TASK)}
    assert named == {TASK_A: TENANT_A, TASK_B: TENANT_B}
    with Session(two_teams.engine) as session:
        for key, task in ((KEY_A, TASK_A), (KEY_B, TASK_B)):
            rows = session.exec(select(Exchange).where(Exchange.task == task)).all()
            assert {(row.client_key_hash, row.tenant) for row in rows} == {
                (key_hash(key), split_task_key(task)[1])
            }


def test_the_answer_names_the_task_of_the_keys_tenant(two_teams: RunningProxy) -> None:
    assert ask(two_teams, KEY_A, TEXTS[0]).headers["x-stillroom-task"] == TASK_A
    assert ask(two_teams, KEY_B, TEXTS[0]).headers["x-stillroom-task"] == TASK_B


def test_one_tenants_curated_pairs_hold_none_of_the_others_exchanges(
    two_teams: RunningProxy,
) -> None:
    client = httpx.AsyncClient()
    unused = StudentReplicas([HttpStudentBackend("http://127.0.0.1:9", client)])
    pipeline = Pipeline(
        settings=two_teams.settings, engine=two_teams.engine, backend=unused, encoder=Encoder()
    )
    curated = curate(pipeline.exchanges(TASK_A), pipeline.curation_config())
    asyncio.run(client.aclose())
    trained_on = {example.exchange_id for example in [*curated.train, *curated.heldout]}
    assert len(trained_on) == len(TEXTS), "each of A's questions once"
    assert trained_on <= exchange_ids(two_teams.engine, KEY_A, TASK_A)
    assert not trained_on & exchange_ids(two_teams.engine, KEY_B, TASK_B)


def test_a_student_published_for_one_tenant_never_answers_the_other(
    two_teams: RunningProxy, team_teacher: FakeTeacher, head: Head
) -> None:
    publish_head(two_teams.engine, TASK_A, head)
    go_live(two_teams, TASK_A)
    asked_teacher = len(team_teacher.chat_requests())
    for text in TEXTS:
        assert ask(two_teams, KEY_A, text).headers["x-stillroom-served-by"] == "student"
        assert ask(two_teams, KEY_B, text).headers["x-stillroom-served-by"] == "teacher"
    assert len(team_teacher.chat_requests()) - asked_teacher == len(TEXTS), "B's requests only"


def test_admin_lists_every_tenants_tasks_and_filters_by_tenant(two_teams: RunningProxy) -> None:
    listed = admin(two_teams, "GET", "/admin/tasks").json()["data"]
    assert {(t["name"], t["tenant"], t["key"]) for t in listed if t["name"] == TASK} == {
        (TASK, TENANT_A, TASK_A),
        (TASK, TENANT_B, TASK_B),
    }
    only_a = admin(two_teams, "GET", f"/admin/tasks?tenant={TENANT_A}").json()["data"]
    assert TASK_A in {t["key"] for t in only_a}
    assert {t["tenant"] for t in only_a} == {TENANT_A}
    assert admin(two_teams, "GET", "/admin/tasks?tenant=Not%20A%20Tenant").status_code == 400


def test_admin_resolves_a_bare_name_only_when_one_tenant_has_it(two_teams: RunningProxy) -> None:
    ask(two_teams, KEY_A, TEXTS[0], task="only-a")
    wait_until(lambda: task_key("only-a", TENANT_A) in tasks_in_store(two_teams.engine))
    assert admin(two_teams, "GET", "/admin/tasks/only-a").json()["key"] == f"only-a@{TENANT_A}"
    ambiguous = admin(two_teams, "GET", f"/admin/tasks/{TASK}/versions")
    assert ambiguous.status_code == 400
    error = ambiguous.json()["error"]
    assert (error["code"], error["param"]) == ("ambiguous_task", "task")
    assert TASK_A in error["message"]
    assert TASK_B in error["message"]
    picked = admin(two_teams, "GET", f"/admin/tasks/{TASK}?tenant={TENANT_B}")
    assert picked.json()["key"] == TASK_B
    assert admin(two_teams, "GET", f"/admin/tasks/{TASK_A}").json()["key"] == TASK_A
    missing = admin(two_teams, "GET", "/admin/tasks/no-such-task/runs")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"


def test_the_cli_shows_the_tenant_of_each_task_and_filters_by_it(two_teams: RunningProxy) -> None:
    env = {**os.environ, "STILLROOM_URL": two_teams.url, "COLUMNS": "400"}

    def tasks(*args: str) -> str:
        done = subprocess.run(
            [STILLROOM, "tasks", *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    every = tasks()
    assert TENANT_A in every
    assert TENANT_B in every
    only_b = tasks("--tenant", TENANT_B)
    assert TENANT_B in only_b
    assert TENANT_A not in only_b


def test_requests_without_a_key_are_the_default_tenants(two_teams: RunningProxy) -> None:
    assert ask(two_teams, None, TEXTS[0], task="keyless").headers["x-stillroom-task"] == "keyless"
    wait_until(lambda: tasks_in_store(two_teams.engine).get("keyless") == "default")


def test_responses_and_messages_name_the_task_of_the_keys_tenant(two_teams: RunningProxy) -> None:
    two_teams.client(api_key=KEY_A).responses.create(
        model="gpt-4o-mini", input="hi", extra_headers={"X-Stillroom-Task": "replies"}
    )
    with anthropic.Anthropic(base_url=two_teams.url, api_key=KEY_B, max_retries=0) as sdk:
        sdk.messages.create(
            model="claude-haiku-4-5",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Stillroom-Task": "replies"},
        )
    expected = {task_key("replies", TENANT_A): TENANT_A, task_key("replies", TENANT_B): TENANT_B}

    def replies() -> dict[str, str]:
        return {k: t for k, t in tasks_in_store(two_teams.engine).items() if "replies" in k}

    wait_until(lambda: replies() == expected)


def test_named_tenants_reach_a_child_process_as_hashes_only() -> None:
    settings = Settings(tenants="acme=sk-a1;globex=sk-g1")
    passed = settings_environment(settings)["STILLROOM_TENANTS"]
    assert "sk-a1" not in passed
    assert Settings(tenants=passed).key_tenants == settings.key_tenants


def test_single_tenancy_puts_every_key_in_the_default_tenant(
    start_tenants_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = start_tenants_proxy(tenancy="single")
    ask(proxy, KEY_A, TEXTS[0])
    ask(proxy, KEY_B, TEXTS[0])
    stored_exchanges(proxy.engine, 2)
    assert tasks_in_store(proxy.engine) == {TASK: "default"}


def test_server_key_mode_names_the_tenant_of_the_api_key_presented(
    start_tenants_proxy: Callable[..., RunningProxy], teacher: FakeTeacher
) -> None:
    proxy = start_tenants_proxy(
        teacher_api_key="sk-teacher", api_keys="sk-issued-a,sk-issued-b", tenants="acme=sk-issued-a"
    )
    ask(proxy, "sk-issued-a", TEXTS[0])
    ask(proxy, "sk-issued-b", TEXTS[0])
    rows = stored_exchanges(proxy.engine, 2)
    unnamed = unnamed_tenant(key_hash("sk-issued-b"))
    assert tasks_in_store(proxy.engine) == {f"{TASK}@acme": "acme", f"{TASK}@{unnamed}": unnamed}
    assert {r.headers["authorization"] for r in teacher.chat_requests()} == {"Bearer sk-teacher"}
    stored = "".join(row.model_dump_json() for row in rows)
    assert "sk-issued-a" not in stored
    assert "sk-issued-b" not in stored


def test_a_key_named_for_the_default_tenant_keeps_a_student_from_before_tenants(
    start_tenants_proxy: Callable[..., RunningProxy], database_url: str, head: Head
) -> None:
    engine = create_store_engine(database_url)
    try:
        create_tables(engine)
        publish_head(engine, TASK, head)  # a store from before tenants: the default tenant's
    finally:
        engine.dispose()
    proxy = start_tenants_proxy(tenants=f"default=sha256:{key_hash(KEY_A)}")
    go_live(proxy, TASK)
    assert ask(proxy, KEY_A, TEXTS[0]).headers["x-stillroom-served-by"] == "student"
    assert ask(proxy, KEY_B, TEXTS[0]).headers["x-stillroom-served-by"] == "teacher"


@pytest.fixture
def store_from_before_tenants(database_url: str, head: Head) -> Iterator[Engine]:
    engine = create_store_engine(database_url)
    create_tables(engine)
    publish_head(engine, TASK, head)
    yield engine
    engine.dispose()


def test_start_up_warns_when_key_tenancy_leaves_default_tenant_students_unreached(
    store_from_before_tenants: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="stillroom.tenancy"):
        assert warn_of_stranded_students(store_from_before_tenants, Settings()) == 1
    [warning] = caplog.messages
    assert "STILLROOM_TENANTS='default=sha256:" in warning
    assert "STILLROOM_TENANCY=single" in warning


@pytest.mark.parametrize(
    "settings",
    [{"tenancy": "single"}, {"tenants": "default=sk-old-client"}],
    ids=["single", "default-named"],
)
def test_start_up_is_quiet_when_default_tenant_students_stay_reachable(
    store_from_before_tenants: Engine, caplog: pytest.LogCaptureFixture, settings: dict[str, Any]
) -> None:
    with caplog.at_level(logging.WARNING, logger="stillroom.tenancy"):
        assert warn_of_stranded_students(store_from_before_tenants, Settings(**settings)) == 0
    assert not caplog.messages
