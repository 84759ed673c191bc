"""The `stillroom` command: real processes, as a user starts them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from core import migrations
from core.settings import Settings
from core.store import create_store_engine, create_tables

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from routing_support import TASK, publish_version
from servers import free_port, wait_until

STILLROOM = str(Path(sys.executable).with_name("stillroom"))


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")}
    env.update(
        STILLROOM_DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}",
        STILLROOM_DATA_DIR=str(tmp_path / "data"),
        STILLROOM_LOG_LEVEL="warning",
        **extra,
    )
    return env


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
        process.wait(timeout=30)


def _up(url: str, path: str = "/healthz") -> bool:
    try:
        return httpx.get(url + path, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("command", [["serve"], ["proxy", "--workers", "2"]])
def test_started_proxy_answers_through_the_teacher(
    tmp_path: Path,
    teacher: FakeTeacher,
    processes: list[subprocess.Popen[bytes]],
    command: list[str],
    tiny_model: Path,
) -> None:
    port, student_port = free_port(), free_port()
    config = tmp_path / "stillroom.toml"
    config.write_text(f'teacher_url = "{teacher.url}/v1"\nbase_model = "{tiny_model}"\n')
    processes.append(
        subprocess.Popen(
            [STILLROOM, *command, "--port", str(port), "--config", str(config)]
            + (["--student-port", str(student_port)] if command == ["serve"] else []),
            env=_env(tmp_path),
        )
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _up(url), timeout=30)
    response = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Answer to: hi"
    if command == ["serve"]:
        wait_until(lambda: _up(f"http://127.0.0.1:{student_port}", "/health"), timeout=30)
        models = httpx.get(f"http://127.0.0.1:{student_port}/v1/models").json()
        assert models["data"][0]["id"] == str(tiny_model), "serve runs the student server"


def test_invalid_configuration_exits_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [STILLROOM, "serve"],
        env=_env(tmp_path, STILLROOM_TEACHER_URL="api.openai.com"),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"invalid configuration" in result.stderr
    assert b"teacher_url" in result.stderr


def test_missing_config_file_exits_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [STILLROOM, "serve", "--config", str(tmp_path / "nope.toml")],
        env=_env(tmp_path),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert b"configuration file not found" in result.stderr


def _stillroom(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STILLROOM, *args], env=_env(tmp_path), capture_output=True, text=True, timeout=60
    )


def test_db_upgrade_brings_a_release_store_to_head_and_current_says_so(tmp_path: Path) -> None:
    dump = Path(__file__).parents[1] / "core" / "fixtures" / "store_683dfd0.sqlite.sql"
    with closing(sqlite3.connect(tmp_path / "cli.db")) as connection:
        connection.executescript(dump.read_text())

    before = _stillroom(tmp_path, "db", "current")
    upgrade = _stillroom(tmp_path, "db", "upgrade")
    after = _stillroom(tmp_path, "db", "current")

    assert before.returncode == 0, before.stderr
    assert "store:   no revision: tables of a release before migrations" in before.stdout
    assert f"head:    {migrations.head()}" in before.stdout
    assert f"pending: {', '.join(migrations.revisions()[1:])}" in before.stdout
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"upgraded the store from no revision to {migrations.head()}" in upgrade.stdout
    assert after.returncode == 0, after.stderr
    assert f"store:   {migrations.head()}" in after.stdout
    assert "up to date" in after.stdout


def test_db_commands_on_a_store_newer_than_the_build_fail_with_a_clear_message(
    tmp_path: Path,
) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'cli.db'}")
    try:
        create_tables(engine)
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE alembic_version SET version_num = '0099_future'"))
    finally:
        engine.dispose()

    current = _stillroom(tmp_path, "db", "current")
    upgrade = _stillroom(tmp_path, "db", "upgrade")

    assert current.returncode == 1
    assert "store:   0099_future (newer than this build)" in current.stdout
    assert "upgrade stillroom" in current.stderr
    assert upgrade.returncode == 1
    assert "'0099_future'" in upgrade.stderr
    assert "Upgrade stillroom" in upgrade.stderr


def test_rollout_keeps_its_reason_and_tasks_shows_the_latest_change(
    teacher: FakeTeacher,
    sqlite_url: str,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> None:
    publish_version(sqlite_url)
    proxy = start_proxy(make_settings(teacher_url=teacher.url + "/v1"))
    env = {**os.environ, "STILLROOM_URL": proxy.url, "COLUMNS": "400"}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [STILLROOM, *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    rolled = cli("rollout", TASK, "--mode", "live", "--percent", "25", "--reason", "canary")
    assert f"{TASK}: live, 25% on the student" in rolled
    [latest] = httpx.get(proxy.url + f"/admin/tasks/{TASK}").json()["transitions"]
    assert (latest["cause"], latest["to_mode"], latest["reason"]) == ("admin", "live", "canary")
    assert "admin, " in cli("tasks")
