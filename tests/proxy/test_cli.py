"""The `stillroom` command: real processes, as a user starts them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fakes.teacher import FakeTeacher
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
