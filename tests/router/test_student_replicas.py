"""Several replicas of the student server: a LoRA version's requests go only to replicas
whose model list holds its adapter, in turn; a restarted replica is passed over until the
distiller's adapter sync loads it again; with no replica holding it, the teacher answers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from core.settings import Settings
from core.store import create_store_engine
from core.tables import StudentVersion
from proxy.processes import distiller_app
from proxy.processes.distiller_app import create_distiller_app
from router.policy import StudentRef
from router.replicas import ON_DEMAND_REFRESH_SECONDS
from router.student import StudentClient, StudentDeclined, StudentUnavailable

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from fakes.vllm import RunningVllm, write_adapter_config
from routing_support import ADAPTER, TASK, ask, publish_version, set_policy
from servers import ServerThread, wait_until

PAYLOAD = {"messages": [{"role": "user", "content": "my bill is wrong"}]}


def ref(adapter: str = ADAPTER) -> StudentRef:
    return StudentRef(
        version_id="v1",
        number=1,
        kind="lora",
        adapter_name=adapter,
        metric="label",
        confidence_threshold=None,
    )


def chats(replica: RunningVllm) -> int:
    return len(replica.fake.chat_requests())


@pytest.fixture
def adapter_path(tmp_path: Path) -> str:
    return str(write_adapter_config(tmp_path / ADAPTER))


@pytest.fixture
def replicas(adapter_path: str) -> Iterator[list[RunningVllm]]:
    """Two fake vLLM replicas, each holding ADAPTER."""
    running = [RunningVllm(), RunningVllm()]
    for replica in running:
        replica.fake.adapters[ADAPTER] = adapter_path
        replica.fake.answers[ADAPTER] = "billing"
    yield running
    for replica in running:
        replica.stop()


def asked_only_where_held(replicas: list[RunningVllm]) -> bool:
    """No replica was asked to answer as an adapter it did not hold."""
    return all(replica.fake.unknown_models == [] for replica in replicas)


async def started(
    replicas: list[RunningVllm], http: httpx.AsyncClient, *, refresh_seconds: float = 0.1
) -> StudentClient:
    client = StudentClient(
        base_urls=[r.url for r in replicas],
        client=http,
        timeout=5.0,
        refresh_seconds=refresh_seconds,
    )
    await client.start()
    return client


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_requests_take_turns_among_the_replicas_holding_the_adapter(
    replicas: list[RunningVllm], http: httpx.AsyncClient
) -> None:
    student = await started(replicas, http)
    try:
        for _ in range(4):
            assert (await student.answer(ref(), PAYLOAD)).text == "billing"
    finally:
        await student.close()
    assert [chats(r) for r in replicas] == [2, 2]


async def test_no_request_goes_to_a_replica_lacking_the_adapter(
    replicas: list[RunningVllm], http: httpx.AsyncClient
) -> None:
    del replicas[1].fake.adapters[ADAPTER]
    student = await started(replicas, http)
    try:
        for _ in range(5):
            await student.answer(ref(), PAYLOAD)
    finally:
        await student.close()
    assert [chats(r) for r in replicas] == [5, 0]
    assert asked_only_where_held(replicas)


async def test_an_adapter_no_replica_holds_is_declined_without_a_call(
    replicas: list[RunningVllm], http: httpx.AsyncClient
) -> None:
    student = await started(replicas, http)
    try:
        with pytest.raises(StudentDeclined, match="no student server replica holds") as raised:
            await student.answer(ref("other-v1"), PAYLOAD)
    finally:
        await student.close()
    assert raised.value.reason == "not_loaded"
    assert [chats(r) for r in replicas] == [0, 0]


async def test_an_adapter_loaded_after_the_last_look_is_found_at_its_first_request(
    replicas: list[RunningVllm], http: httpx.AsyncClient, adapter_path: str
) -> None:
    student = await started(replicas, http, refresh_seconds=60.0)
    try:
        replicas[0].fake.adapters["new-v1"] = adapter_path
        await asyncio.sleep(ON_DEMAND_REFRESH_SECONDS)
        await student.answer(ref("new-v1"), PAYLOAD)
    finally:
        await student.close()
    assert [call.body["model"] for call in replicas[0].fake.chat_requests()] == ["new-v1"]


async def test_a_replica_that_fails_a_call_is_passed_over_until_it_lists_the_adapter(
    replicas: list[RunningVllm], http: httpx.AsyncClient, adapter_path: str
) -> None:
    student = await started(replicas, http, refresh_seconds=60.0)
    try:
        await student.answer(ref(), PAYLOAD)  # replica 0; replica 1 is next
        replicas[1].stop()
        with pytest.raises(StudentUnavailable, match=re.escape(replicas[1].url)):
            await student.answer(ref(), PAYLOAD)
        for _ in range(3):
            await student.answer(ref(), PAYLOAD)
        assert [chats(r) for r in replicas] == [4, 0]
        replicas[1].restart()
        replicas[1].fake.adapters[ADAPTER] = adapter_path  # as the adapter sync does
        await student.replicas.refresh()
        for _ in range(2):
            await student.answer(ref(), PAYLOAD)
    finally:
        await student.close()
    assert [chats(r) for r in replicas] == [5, 1]


# --- through the proxy, with the distiller's adapter sync --------------------------------


def point_at(database_url: str, adapter_path: str) -> None:
    """The live version's adapter, where the replicas (and the sync) load it from."""
    engine = create_store_engine(database_url)
    with Session(engine) as session:
        version = session.get(StudentVersion, publish_version(database_url))
        assert version is not None
        version.adapter_path = adapter_path
        session.add(version)
        session.commit()
    engine.dispose()


def test_a_restarted_replica_is_passed_over_until_the_sync_reloads_it(
    replicas: list[RunningVllm],
    adapter_path: str,
    teacher: FakeTeacher,
    sqlite_url: str,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    teacher.responder = lambda payload: "billing"
    point_at(sqlite_url, adapter_path)
    urls = [r.url for r in replicas]
    proxy = start_proxy(
        make_settings(
            teacher_url=teacher.url + "/v1",
            student_urls=urls,
            student_refresh_seconds=0.2,
            policy_refresh_seconds=0.2,
            difficulty_gate=False,
        )
    )
    known = proxy.runtime.student_client.replicas
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)

    def served(count: int) -> list[str]:
        return [ask(proxy, text=f"bill {n}").headers["x-stillroom-served-by"] for n in range(count)]

    assert served(4) == ["student"] * 4
    assert [chats(r) for r in replicas] == [2, 2]

    replicas[1].restart()
    wait_until(lambda: known.holding(ADAPTER) == urls[:1])
    assert served(4) == ["student"] * 4
    assert [chats(r) for r in replicas] == [6, 2]

    replicas[0].restart()
    wait_until(lambda: known.holding(ADAPTER) == [])
    assert served(2) == ["fallback"] * 2
    assert len(teacher.chat_requests()) == 2
    metrics = httpx.get(proxy.url + "/metrics").text
    assert f'stillroom_routing_decisions_total{{reason="not_loaded",task="{TASK}"}} 2.0' in metrics

    monkeypatch.setattr(distiller_app, "ADAPTER_SYNC_SECONDS", 0.2)
    distiller = make_settings(student_backend="vllm", student_urls=urls)
    running = ServerThread(create_distiller_app(distiller)).start()
    try:
        wait_until(lambda: known.holding(ADAPTER) == urls)
    finally:
        running.stop()
    assert served(4) == ["student"] * 4
    assert [chats(r) for r in replicas] == [8, 4]
    assert asked_only_where_held(replicas)
