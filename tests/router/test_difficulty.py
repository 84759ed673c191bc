"""The difficulty gate sends inputs like those the student got wrong to the teacher."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
from sqlmodel import Session

from core.store import insert_exchanges
from core.tables import ExchangeCreate, StudentVersion, Task

from conftest import RunningProxy
from fakes.vllm import FakeVllm
from routing_support import SYSTEM, TASK, ask, set_policy
from servers import wait_until

WEATHER = [f"what is the weather in {city} today" for city in ("Paris", "Oslo", "Lima", "Rome")]
BILLING = [f"my {month} bill is wrong" for month in ("May", "June", "July", "March")]


def seed_heldout(proxy: RunningProxy) -> str:
    """Held-out results of the live version: billing right, weather wrong."""
    exchanges, results = [], []
    for texts, agreed in ((WEATHER * 3, False), (BILLING * 3, True)):
        for n, text in enumerate(texts):
            exchange_id = uuid.uuid4().hex
            exchanges.append(
                ExchangeCreate(
                    id=exchange_id,
                    task=TASK,
                    served_by="teacher",
                    status="ok",
                    http_status=200,
                    request={
                        "model": "gpt-4o-mini",
                        "messages": [SYSTEM, {"role": "user", "content": f"{text} ({n})"}],
                    },
                    latency_ms=1.0,
                )
            )
            results.append([exchange_id, agreed])
    insert_exchanges(engine=proxy.engine, exchanges=exchanges)
    with Session(proxy.engine) as session:
        task = session.get(Task, TASK)
        assert task is not None
        version = session.get(StudentVersion, task.active_version_id)
        assert version is not None
        version.evaluation = {**version.evaluation, "heldout": results}
        session.add(version)
        session.commit()
        return version.id


def test_input_like_those_the_student_got_wrong_goes_straight_to_the_teacher(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm
) -> None:
    proxy = routed_proxy()
    version_id = seed_heldout(proxy)
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    ask(proxy, text="warming up")
    gate = proxy.runtime.difficulty
    wait_until(lambda: gate.ready(version_id), timeout=60)

    calls_before = len(vllm.chat_requests())
    hard = ask(proxy, text="what is the weather in Madrid today")
    assert hard.headers["x-stillroom-served-by"] == "teacher"
    assert len(vllm.chat_requests()) == calls_before, "the student was not asked"
    easy = ask(proxy, text="my August bill is wrong")
    assert easy.headers["x-stillroom-served-by"] == "student"
    metrics = httpx.get(proxy.url + "/metrics").text
    assert f'stillroom_routing_decisions_total{{reason="difficult",task="{TASK}"}} 1.0' in metrics
