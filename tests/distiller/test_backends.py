"""The student backend over HTTP: the same calls against the fake vLLM and the real embedded
student server, and vLLM's errors turned into StudentBackendError with the server's message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.errors import ConfigurationError
from core.settings import Settings
from distiller.backends import (
    DEFAULT_EMBEDDED_URL,
    HttpStudentBackend,
    StudentBackendError,
    create_student_backend,
)
from distiller.student_server import create_student_app

from fakes.vllm import FakeVllm, write_adapter_config
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
    embedded = create_student_backend(Settings(), client)
    assert isinstance(embedded, HttpStudentBackend)
    assert embedded.base_url == DEFAULT_EMBEDDED_URL
    vllm = Settings(student_backend="vllm", student_url="http://gpu:8000/v1")
    backend = create_student_backend(vllm, client)
    assert isinstance(backend, HttpStudentBackend)
    assert backend.base_url == "http://gpu:8000"
    with pytest.raises(ConfigurationError, match="STILLROOM_STUDENT_URL"):
        create_student_backend(Settings(student_backend="vllm"), client)
