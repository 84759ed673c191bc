"""Fixtures: stores (SQLite and Postgres), a fake teacher, and the proxy, all real servers."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import sqlalchemy as sa

from core.settings import Settings
from core.store import create_store_engine
from distiller.tiny_model import build_tiny_model
from proxy.processes.app import create_app

from fakes.teacher import FakeTeacher
from servers import ServerThread

POSTGRES_ADMIN_URL = os.environ.get(
    "STILLROOM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'stillroom.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty database on the Postgres at 127.0.0.1:5432, dropped afterwards."""
    yield from postgres_database()


def postgres_database() -> Iterator[str]:
    """The body of :func:`postgres_url`, for fixtures of a wider scope."""
    name = f"stillroom_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Postgres at {POSTGRES_ADMIN_URL}: {exc.orig}")
    url = sa.make_url(POSTGRES_ADMIN_URL).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on Postgres."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def teacher() -> Iterator[FakeTeacher]:
    fake = FakeTeacher()
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


@pytest.fixture
def make_settings(tmp_path: Path, sqlite_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": sqlite_url,
            "data_dir": tmp_path / "data",
            "capture_flush_seconds": 0.05,
            "capture_retry_seconds": 0.3,
            # Every test client presents "sk-client" and many look tasks up by bare name:
            # one tenant, unless a test of tenants asks for "key".
            "tenancy": "single",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with a locally trained tokenizer: a student base for fast tests."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


class RunningProxy:
    def __init__(self, settings: Settings, *, distiller: bool = False) -> None:
        self.settings = settings
        self.app = create_app(settings, distiller=distiller)
        self.server = ServerThread(self.app).start()
        self.engine = create_store_engine(settings.database_url)
        self._clients: list[openai.OpenAI] = []

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    def client(self, **options: Any) -> openai.OpenAI:
        options.setdefault("api_key", "sk-client")
        options.setdefault("max_retries", 0)
        client = openai.OpenAI(base_url=self.url + "/v1", **options)
        self._clients.append(client)
        return client

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self.server.stop()
        self.engine.dispose()


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., RunningProxy]]:
    started: list[RunningProxy] = []

    def start(settings: Settings, *, distiller: bool = False) -> RunningProxy:
        proxy = RunningProxy(settings, distiller=distiller)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(
    teacher: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
) -> RunningProxy:
    """The proxy on SQLite, in front of the fake teacher, holding no teacher key."""
    return start_proxy(make_settings(teacher_url=teacher.url + "/v1"))
