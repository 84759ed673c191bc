"""The student backend over HTTP: the same calls against the fake vLLM and the real embedded
student server, and vLLM's errors turned into StudentBackendError with the server's message;
publishing to several replicas of the student server, and keeping each one loaded."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from core.errors import ConfigurationError
from core.settings import Settings
from core.store import create_store_engine, create_tables
from core.tables import StudentVersion
from distiller.backends import (
    DEFAULT_EMBEDDED_URL,
    HttpStudentBackend,
    StudentBackendError,
    StudentReplicas,
    StudentServerDown,
    create_student_backend,
)
from distiller.registry import publish, sync_adapters
from distiller.student_server import create_student_app

from fakes.vllm import FakeVllm, RunningVllm, write_adapter_config
from servers import ServerThread, free_port

PROBE = [{"role": "user", "content": "I want a refund for the ticket"}]


@pytest.fixture
def adapter(adapters: dict[str, Path]) -> Path:
    return adapters["alpha"]


@pytest.fixture
def fake_vllm() -> Iterator[FakeVllm]:
    fake = FakeVllm()
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


@dataclass
class Server:
    kind: str
    url: str


@pytest.fixture(params=["vllm", "embedded"])
def server(request: pytest.FixtureRequest, tiny_model: Path) -> Iterator[Server]:
    """Each test using this runs against the fake vLLM and the embedded student server."""
    if request.param == "vllm":
        fake: FakeVllm = request.getfixturevalue("fake_vllm")
        yield Server("vllm", fake.url)
        return
    running = ServerThread(create_student_app(base_model=str(tiny_model))).start()
    yield Server("embedded", running.url)
    running.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield http


@pytest.fixture
def backend(server: Server, client: httpx.AsyncClient) -> HttpStudentBackend:
    return HttpStudentBackend(server.url, client)


async def test_an_adapter_is_loaded_checked_asked_and_unloaded(
    backend: HttpStudentBackend, adapter: Path
) -> None:
    await backend.load_adapter("task-v1", str(adapter))
    assert await backend.list_adapters() == ["task-v1"]
    await backend.health_check("task-v1", PROBE)
    completion = await backend.complete("task-v1", PROBE, max_tokens=4, logprobs=True)
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "task-v1"
    choice = completion["choices"][0]
    assert choice["message"]["content"]
    assert choice["logprobs"]["content"]
    await backend.unload_adapter("task-v1")
    assert await backend.list_adapters() == []


async def test_a_missing_adapter_path_is_not_found(
    backend: HttpStudentBackend, tmp_path: Path
) -> None:
    with pytest.raises(StudentBackendError, match="No adapter found") as raised:
        await backend.load_adapter("task-v1", str(tmp_path / "nowhere"))
    assert raised.value.status_code == 404
    assert raised.value.error_type == "NotFoundError"


async def test_loading_a_loaded_name_again_needs_replace(
    backend: HttpStudentBackend, adapter: Path
) -> None:
    await backend.load_adapter("task-v1", str(adapter))
    with pytest.raises(StudentBackendError, match="has already been loaded") as raised:
        await backend.load_adapter("task-v1", str(adapter))
    assert raised.value.status_code == 400
    await backend.load_adapter("task-v1", str(adapter), replace=True)
    assert await backend.list_adapters() == ["task-v1"]


async def test_unloading_an_unknown_adapter_is_not_found(backend: HttpStudentBackend) -> None:
    with pytest.raises(StudentBackendError, match="'nope' cannot be found") as raised:
        await backend.unload_adapter("nope")
    assert raised.value.status_code == 404


async def test_asking_an_unknown_adapter_is_not_found(backend: HttpStudentBackend) -> None:
    with pytest.raises(StudentBackendError, match="The model `nope` does not exist") as raised:
        await backend.health_check("nope", PROBE)
    assert raised.value.status_code == 404


async def test_requests_are_what_vllm_expects(
    fake_vllm: FakeVllm, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    backend = HttpStudentBackend(fake_vllm.url + "/v1/", client)  # a /v1 base URL works too
    path = str(write_adapter_config(tmp_path / "a"))
    await backend.load_adapter("task-v1", path)
    await backend.complete("task-v1", PROBE, max_tokens=7, logprobs=False)
    await backend.unload_adapter("task-v1")
    load, chat, unload = fake_vllm.requests
    assert (load.path, load.body) == (
        "/v1/load_lora_adapter",
        {"lora_name": "task-v1", "lora_path": path},
    )
    assert chat.path == "/v1/chat/completions"
    assert chat.body == {
        "model": "task-v1",
        "messages": PROBE,
        "max_tokens": 7,
        "temperature": 0.0,
        "logprobs": False,
        "stream": False,
    }
    assert (unload.path, unload.body) == ("/v1/unload_lora_adapter", {"lora_name": "task-v1"})


async def test_an_empty_answer_fails_the_health_check(
    fake_vllm: FakeVllm, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    backend = HttpStudentBackend(fake_vllm.url, client)
    await backend.load_adapter("task-v1", str(write_adapter_config(tmp_path / "a")))
    fake_vllm.answers["task-v1"] = "  "
    with pytest.raises(StudentBackendError, match="'task-v1' failed its health check"):
        await backend.health_check("task-v1", PROBE)


async def test_a_load_the_server_refuses_carries_its_message(
    fake_vllm: FakeVllm, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    path = str(write_adapter_config(tmp_path / "a"))
    fake_vllm.load_errors[path] = "while loading a, expected target modules in {'q_proj'}"
    backend = HttpStudentBackend(fake_vllm.url, client)
    with pytest.raises(StudentBackendError, match="expected target modules") as raised:
        await backend.load_adapter("task-v1", path)
    assert raised.value.status_code == 400
    assert raised.value.error_type == "BadRequestError"


async def test_an_unreachable_server_is_a_backend_error(client: httpx.AsyncClient) -> None:
    backend = HttpStudentBackend(f"http://127.0.0.1:{free_port()}", client)
    with pytest.raises(StudentBackendError, match="could not be reached"):
        await backend.list_adapters()


async def test_errors_that_are_not_json_keep_their_text() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="Internal Server Error")

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        backend = HttpStudentBackend("http://student", http)
        with pytest.raises(StudentBackendError, match="500: Internal Server Error") as raised:
            await backend.unload_adapter("task-v1")
    assert raised.value.status_code == 500
    assert raised.value.error_type is None


async def test_vllms_older_flat_error_shape_is_understood() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        body = {"object": "error", "message": "old message", "type": "NotFoundError", "code": 404}
        return httpx.Response(404, json=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        with pytest.raises(StudentBackendError, match="old message") as raised:
            await HttpStudentBackend("http://student", http).list_adapters()
    assert raised.value.error_type == "NotFoundError"


async def test_the_factory_follows_the_settings(client: httpx.AsyncClient) -> None:
    assert create_student_backend(Settings(), client).urls == [DEFAULT_EMBEDDED_URL]
    vllm = Settings(student_backend="vllm", student_url="http://gpu:8000/v1")
    assert create_student_backend(vllm, client).urls == ["http://gpu:8000"]
    replicas = vllm.model_copy(
        update={"student_urls": ["http://vllm-0:8000", "http://vllm-1:8000"]}
    )
    assert create_student_backend(replicas, client).urls == [
        "http://vllm-0:8000",
        "http://vllm-1:8000",
    ]
    with pytest.raises(ConfigurationError, match="STILLROOM_STUDENT_URLS"):
        create_student_backend(Settings(student_backend="vllm"), client)


# --- several replicas -------------------------------------------------------------------

ADAPTER = "task-v1"


@pytest.fixture
def replicas() -> Iterator[list[RunningVllm]]:
    """Two fake vLLM replicas of one student server."""
    running = [RunningVllm(), RunningVllm()]
    yield running
    for replica in running:
        replica.stop()


@pytest.fixture
def adapter_path(tmp_path: Path) -> str:
    return str(write_adapter_config(tmp_path / ADAPTER))


def over(urls: list[str], client: httpx.AsyncClient) -> StudentReplicas:
    return StudentReplicas([HttpStudentBackend(url, client) for url in urls])


def calls(replica: RunningVllm, path: str) -> int:
    return sum(1 for call in replica.fake.requests if call.path == path)


async def test_a_version_is_loaded_into_and_checked_on_every_replica(
    replicas: list[RunningVllm], client: httpx.AsyncClient, adapter_path: str
) -> None:
    placement = await over([r.url for r in replicas], client).publish(ADAPTER, adapter_path, PROBE)
    assert placement.holding == (replicas[0].url, replicas[1].url)
    assert placement.down == {}
    for replica in replicas:
        assert replica.fake.adapters == {ADAPTER: adapter_path}
        assert calls(replica, "/v1/chat/completions") == 1, "health-checked on each"


async def test_a_replica_down_at_publish_is_passed_over_while_another_holds_the_adapter(
    replicas: list[RunningVllm], client: httpx.AsyncClient, adapter_path: str
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    placement = await over([replicas[0].url, down], client).publish(ADAPTER, adapter_path, PROBE)
    assert placement.holding == (replicas[0].url,)
    assert list(placement.down) == [down]
    assert "could not be reached" in placement.down[down]


async def test_a_replica_starting_up_counts_as_down(
    replicas: list[RunningVllm], client: httpx.AsyncClient, adapter_path: str
) -> None:
    def starting(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, text="Service Unavailable")

    async with httpx.AsyncClient(transport=httpx.MockTransport(starting)) as http:
        up = HttpStudentBackend(replicas[0].url, client)
        backend = StudentReplicas([up, HttpStudentBackend("http://vllm-1:8000", http)])
        placement = await backend.publish(ADAPTER, adapter_path, PROBE)
    assert placement.holding == (replicas[0].url,)
    assert list(placement.down) == ["http://vllm-1:8000"]


async def test_publishing_fails_when_no_replica_is_up(
    client: httpx.AsyncClient, adapter_path: str
) -> None:
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    with pytest.raises(StudentServerDown, match="no student server replica holds 'task-v1'"):
        await over(urls, client).publish(ADAPTER, adapter_path, PROBE)


async def test_a_replica_that_refuses_the_adapter_fails_the_publish(
    replicas: list[RunningVllm], client: httpx.AsyncClient, adapter_path: str
) -> None:
    replicas[1].fake.load_errors[adapter_path] = "expected target modules in {'q_proj'}"
    with pytest.raises(StudentBackendError, match="expected target modules") as raised:
        await over([r.url for r in replicas], client).publish(ADAPTER, adapter_path, PROBE)
    assert str(raised.value).startswith(replicas[1].url)
    assert not isinstance(raised.value, StudentServerDown)


async def test_an_empty_answer_on_one_replica_fails_the_publish(
    replicas: list[RunningVllm], client: httpx.AsyncClient, adapter_path: str
) -> None:
    replicas[1].fake.answers[ADAPTER] = " "
    with pytest.raises(StudentBackendError, match="failed its health check"):
        await over([r.url for r in replicas], client).publish(ADAPTER, adapter_path, PROBE)


async def test_sync_loads_the_adapters_a_restarted_replica_lacks(
    replicas: list[RunningVllm], client: httpx.AsyncClient, adapter_path: str
) -> None:
    backend = over([r.url for r in replicas], client)
    await backend.publish(ADAPTER, adapter_path, PROBE)
    replicas[1].restart()
    assert replicas[1].fake.adapters == {}
    report = await backend.sync({ADAPTER: adapter_path})
    assert report.loaded == ((replicas[1].url, ADAPTER),)
    assert report.failed == ()
    assert replicas[1].fake.adapters == {ADAPTER: adapter_path}
    assert calls(replicas[0], "/v1/load_lora_adapter") == 1, "the other replica had it"


async def test_sync_goes_on_past_a_replica_that_is_down_or_refuses(
    replicas: list[RunningVllm], client: httpx.AsyncClient, tmp_path: Path, adapter_path: str
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    refused = str(write_adapter_config(tmp_path / "refused"))
    replicas[0].fake.load_errors[refused] = "rank too high"
    report = await over([down, replicas[0].url], client).sync(
        {"refused-v1": refused, ADAPTER: adapter_path}
    )
    assert report.loaded == ((replicas[0].url, ADAPTER),)
    [(first, why_down), (second, why_refused)] = report.failed
    assert (first, second) == (down, replicas[0].url)
    assert "could not be reached" in why_down
    assert why_refused.startswith("refused-v1: ")
    assert "rank too high" in why_refused


async def test_a_version_published_with_a_replica_down_reaches_it_by_the_sync(
    replicas: list[RunningVllm], client: httpx.AsyncClient, adapter_path: str, sqlite_url: str
) -> None:
    engine = create_store_engine(sqlite_url)
    create_tables(engine)
    version = StudentVersion(
        id=uuid.uuid4().hex,
        task="task",
        number=1,
        base_model="tiny",
        adapter_name=ADAPTER,
        adapter_path=adapter_path,
    )
    with Session(engine) as session:
        session.add(version)
        session.commit()
        session.refresh(version)
        session.expunge(version)
    backend = over([r.url for r in replicas], client)
    replicas[1].stop()
    published = await publish(engine=engine, backend=backend, version=version, probe_messages=PROBE)
    assert published.state == "published"
    replicas[1].restart()
    report = await sync_adapters(engine=engine, backend=backend)
    assert report.loaded == ((replicas[1].url, ADAPTER),)
    assert all(r.fake.adapters == {ADAPTER: adapter_path} for r in replicas)
    engine.dispose()
