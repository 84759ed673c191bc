"""Deletion on request (``DELETE /admin/exchanges``, ``stillroom forget``), per-task
retention through the admin API, and scrubbing at capture, on a real proxy over SQLite
and Postgres."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from core.request_identity import request_hash
from core.settings import Settings
from core.store import insert_exchanges
from core.tables import Exchange, ExchangeCreate, ShadowResult

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from servers import stored_exchanges, wait_until

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
TASK = "triage"
NOW = datetime.now(UTC)


@pytest.fixture
def proxy_on(
    database_url: str,
    teacher: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
) -> Callable[..., RunningProxy]:
    """Start a proxy on the parametrized store."""

    def start(**overrides: Any) -> RunningProxy:
        settings = make_settings(
            database_url=database_url, teacher_url=teacher.url + "/v1", **overrides
        )
        return start_proxy(settings)

    return start


def ask(proxy: RunningProxy, text: str, *, user: str | None = None, **headers: str) -> None:
    extra: dict[str, Any] = {"user": user} if user is not None else {}
    proxy.client().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": text}],
        extra_headers={"X-Stillroom-Task": TASK, **headers},
        **extra,
    )


def exchange(
    *, task: str = TASK, days_old: float = 0.0, user: str | None = None, text: str = "hi"
) -> ExchangeCreate:
    request = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return ExchangeCreate(
        id=uuid.uuid4().hex,
        task=task,
        created_at=NOW - timedelta(days=days_old),
        served_by="teacher",
        status="ok",
        http_status=200,
        request=request,
        request_hash=request_hash(request),
        response={
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ]
        },
        end_user=user,
        latency_ms=1.0,
    )


def shadow_result(proxy: RunningProxy, exchange_id: str, kind: str = "shadow") -> None:
    with Session(proxy.engine) as session, session.begin():
        session.add(
            ShadowResult(
                id=uuid.uuid4().hex,
                task=TASK,
                version_id="v1",
                kind=kind,
                exchange_id=exchange_id,
                input_text="user: my email is a@b.example",
                agrees=True,
                score=1.0,
                student_answer="ok",
                teacher_answer="ok",
            )
        )


def stored(proxy: RunningProxy) -> list[Exchange]:
    with Session(proxy.engine) as session:
        return list(session.exec(select(Exchange)).all())


def shadow_exchange_ids(proxy: RunningProxy) -> set[str | None]:
    with Session(proxy.engine) as session:
        return set(session.exec(select(ShadowResult.exchange_id)).all())


def forget(proxy: RunningProxy, **query: str) -> httpx.Response:
    return httpx.delete(f"{proxy.url}/admin/exchanges", params=query, timeout=30)


def users_traffic(proxy: RunningProxy) -> dict[str, list[str]]:
    """Two requests of alice's, one of bob's, each with a shadow result; ids by user."""
    ask(proxy, "alice's first", user="alice")
    ask(proxy, "alice's second", user="alice")
    ask(proxy, "bob's", user="bob")
    rows = stored_exchanges(proxy.engine, 3)
    ids: dict[str, list[str]] = {}
    for row in rows:
        assert row.end_user is not None
        ids.setdefault(row.end_user, []).append(row.id)
        shadow_result(proxy, row.id)
    return ids


def test_a_dry_run_counts_a_users_exchanges_and_deletes_nothing(
    proxy_on: Callable[..., RunningProxy],
) -> None:
    proxy = proxy_on()
    users_traffic(proxy)

    answer = forget(proxy, user="alice", dry_run="true")

    assert answer.status_code == 200, answer.text
    assert answer.json()["dry_run"] is True
    assert (answer.json()["exchanges"], answer.json()["shadow_results"]) == (2, 2)
    assert len(stored(proxy)) == 3


def test_deleting_a_user_removes_their_exchanges_and_shadow_results_only(
    proxy_on: Callable[..., RunningProxy],
) -> None:
    proxy = proxy_on()
    ids = users_traffic(proxy)

    answer = forget(proxy, user="alice")

    assert answer.status_code == 200, answer.text
    assert (answer.json()["exchanges"], answer.json()["shadow_results"]) == (2, 2)
    assert {row.id for row in stored(proxy)} == set(ids["bob"])
    assert shadow_exchange_ids(proxy) == set(ids["bob"])
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert 'stillroom_exchanges_deleted_total{reason="request"} 2.0' in metrics


def test_a_route_key_names_the_user_of_a_request_without_one(
    proxy_on: Callable[..., RunningProxy],
) -> None:
    proxy = proxy_on()
    ask(proxy, "carol's", **{"X-Stillroom-Route-Key": "carol"})
    ask(proxy, "dave's", user="dave")
    stored_exchanges(proxy.engine, 2)

    assert forget(proxy, user="carol").json()["exchanges"] == 1
    assert [row.end_user for row in stored(proxy)] == ["dave"]


def test_the_audit_exchanges_made_for_a_deleted_exchange_go_with_it(
    proxy_on: Callable[..., RunningProxy],
) -> None:
    proxy = proxy_on()
    asked = exchange(user="erin", text="erin's question")
    audit = exchange(text="erin's question").model_copy(update={"origin": "audit"})
    other = exchange(user="frank", text="frank's question")
    insert_exchanges(engine=proxy.engine, exchanges=[asked, audit, other])
    shadow_result(proxy, audit.id, kind="audit")

    answer = forget(proxy, user="erin").json()

    assert (answer["exchanges"], answer["audit_exchanges"], answer["shadow_results"]) == (1, 1, 1)
    assert [row.id for row in stored(proxy)] == [other.id]
    assert shadow_exchange_ids(proxy) == set()


def test_before_and_task_filters_apply_together(proxy_on: Callable[..., RunningProxy]) -> None:
    proxy = proxy_on()
    old = exchange(days_old=20)
    recent = exchange(days_old=2)
    other_task = exchange(task="summaries", days_old=20)
    insert_exchanges(engine=proxy.engine, exchanges=[old, recent, other_task])
    before = (NOW - timedelta(days=10)).date().isoformat()

    counted = forget(proxy, task=TASK, before=before, dry_run="true").json()
    deleted = forget(proxy, task=TASK, before=before).json()

    assert counted["exchanges"] == deleted["exchanges"] == 1
    assert {row.id for row in stored(proxy)} == {recent.id, other_task.id}


def test_a_before_with_an_offset_means_that_instant(proxy_on: Callable[..., RunningProxy]) -> None:
    proxy = proxy_on()
    earlier, later = exchange(days_old=1 / 24), exchange()
    insert_exchanges(engine=proxy.engine, exchanges=[earlier, later])
    half_an_hour_ago = NOW - timedelta(minutes=30)
    before = half_an_hour_ago.astimezone(timezone(timedelta(hours=5))).isoformat()

    assert forget(proxy, before=before).json()["exchanges"] == 1
    assert [row.id for row in stored(proxy)] == [later.id]


@pytest.mark.parametrize(
    "query",
    [{}, {"before": "last tuesday"}, {"before": "2025-01-01T00:00:00"}, {"dry_run": "true"}],
    ids=["no filter", "not a date", "no timezone", "dry run alone"],
)
def test_a_deletion_without_a_filter_or_with_a_bad_date_is_refused(
    proxy: RunningProxy, query: dict[str, str]
) -> None:
    insert_exchanges(engine=proxy.engine, exchanges=[exchange()])

    answer = forget(proxy, **query)

    assert answer.status_code == 400
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert len(stored(proxy)) == 1


def test_deleted_exchanges_are_purged_from_spill_files(
    proxy_on: Callable[..., RunningProxy],
) -> None:
    proxy = proxy_on()
    spill = proxy.settings.data_dir / "spill"
    spill.mkdir(parents=True, exist_ok=True)
    # Spilled by a live process (pid 1): this proxy leaves its file to it to replay.
    path = spill / "exchanges-1-forget.jsonl"
    kept = exchange(user="bob")
    lines = [exchange(user="alice").model_dump_json(), kept.model_dump_json(), "{cut by a cra"]
    path.write_text("".join(line + "\n" for line in lines))

    answer = forget(proxy, user="alice").json()

    assert answer["spilled"] == 1
    assert path.read_text().splitlines() == [kept.model_dump_json(), "{cut by a cra"]


def test_the_export_leaves_out_deleted_exchanges(proxy_on: Callable[..., RunningProxy]) -> None:
    proxy = proxy_on()
    insert_exchanges(
        engine=proxy.engine,
        exchanges=[exchange(user="alice", text="alice's secret"), exchange(user="bob")],
    )

    forget(proxy, user="alice")
    exported = httpx.get(f"{proxy.url}/admin/tasks/{TASK}/export", timeout=30)

    assert exported.status_code == 200
    assert len(exported.text.splitlines()) == 1
    assert "alice" not in exported.text


def test_scrub_at_capture_stores_scrubbed_text(proxy_on: Callable[..., RunningProxy]) -> None:
    proxy = proxy_on(scrub_pii_at_capture=True)

    ask(proxy, "write to jane.doe@example.com or call +44 20 7946 0958", user="jane")

    (row,) = stored_exchanges(proxy.engine, 1)
    stored_text = str(row.request) + str(row.response)
    assert "jane.doe@example.com" not in stored_text
    assert "7946" not in stored_text
    assert row.request["messages"][0]["content"] == "write to <EMAIL> or call <PHONE>"
    assert row.response is not None
    assert "<EMAIL>" in row.response["choices"][0]["message"]["content"]  # the fake echoes
    assert row.end_user == "jane"


def test_a_tasks_retention_is_set_shown_and_cleared_through_the_admin_api(
    proxy_on: Callable[..., RunningProxy],
) -> None:
    proxy = proxy_on(retention_days=30)
    insert_exchanges(engine=proxy.engine, exchanges=[exchange()])
    url = f"{proxy.url}/admin/tasks/{TASK}"

    refused = httpx.patch(url, json={"retention_days": 0})
    httpx.patch(url, json={"retention_days": 7}).raise_for_status()
    shown = httpx.get(url).json()
    httpx.patch(url, json={"retention_days": None}).raise_for_status()
    cleared = httpx.get(url).json()

    assert refused.status_code == 400
    assert (shown["retention_days"], shown["retention"]) == (7, {"days": 7, "source": "task"})
    assert (cleared["retention_days"], cleared["retention"]) == (
        None,
        {"days": 30, "source": "setting"},
    )


def _forget_command(proxy: RunningProxy, *args: str, answer: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")}
    result = subprocess.run(
        [STILLROOM, "forget", *args, "--url", proxy.url],
        env=env,
        input=answer,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.stdout


def test_the_forget_command_counts_and_asks_then_deletes_with_yes(proxy: RunningProxy) -> None:
    insert_exchanges(engine=proxy.engine, exchanges=[exchange(user="alice"), exchange(user="bob")])

    declined = _forget_command(proxy, "--user", "alice", answer="n\n")
    kept = len(stored(proxy))
    deleted = _forget_command(proxy, "--user", "alice", "--yes")

    assert "would delete 1 exchanges" in declined
    assert "nothing deleted" in declined
    assert kept == 2
    assert "deleted 1 exchanges" in deleted
    wait_until(lambda: [row.end_user for row in stored(proxy)] == ["bob"])
