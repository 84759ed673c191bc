"""openai-python 2.x, still the SDK of many apps, through a real proxy: ``responses.create``
plain and streamed, ``responses.parse`` and ``chat.completions.create``, every exchange
captured with its chat view.

The latest 2.x release is installed from the package index, with its dependencies, into a
cache folder named by its version (``STILLROOM_PYTHON_CLIENTS_CACHE``, else
``~/.cache/stillroom/python-clients``) and reused by later runs; the clients run in a
subprocess with that folder first on ``PYTHONPATH``. Only when pip can reach no index at
all (nor is a 2.x release cached) is the test skipped; an install that fails otherwise
fails it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from conftest import RunningProxy
from servers import stored_exchanges

REQUIREMENT = "openai>=2,<3"
TICKET = "My card was charged twice"
INSTRUCTIONS = "Classify the ticket."

SCRIPT = """
import json, os, sys
import openai
from pydantic import BaseModel

class Ticket(BaseModel):
    category: str
    urgent: str

client = openai.OpenAI(base_url=os.environ["STILLROOM_URL"] + "/v1", api_key="sk-v2", max_retries=0)
ticket, instructions = os.environ["TICKET"], os.environ["INSTRUCTIONS"]
task = {"X-Stillroom-Task": "v2-tickets"}
plain = client.responses.create(
    model="gpt-4o-mini", instructions=instructions, input=ticket, extra_headers=task
)
events = list(client.responses.create(
    model="gpt-4o-mini", instructions=instructions, input=ticket, stream=True, extra_headers=task
))
parsed = client.responses.parse(
    model="gpt-4o-mini", instructions=instructions, input=ticket, text_format=Ticket,
    extra_headers=task,
)
chat = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": ticket}], extra_headers=task
)
print(json.dumps({
    "version": openai.__version__,
    "module": openai.__file__,
    "plain": {"id": plain.id, "text": plain.output_text},
    "stream": {"kinds": [e.type for e in events], "id": events[-1].response.id,
               "text": events[-1].response.output_text},
    "parsed": parsed.output_parsed.model_dump(),
    "chat": chat.choices[0].message.content,
}))
"""


def _cache_root() -> Path:
    given = os.environ.get("STILLROOM_PYTHON_CLIENTS_CACHE")
    return Path(given) if given else Path.home() / ".cache" / "stillroom" / "python-clients"


def _pip(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _indexes() -> list[str]:
    """Where pip looks for packages: its index, extra indexes and find-links locations,
    from its configuration and environment (pypi.org when no index is named)."""
    named: dict[str, list[str]] = {"index-url": [], "extra-index-url": [], "find-links": []}
    for line in _pip("config", "list").stdout.splitlines():
        key, _, value = line.partition("=")
        option = key.rpartition(".")[2]
        if option in named:
            named[option] += shlex.split(value.strip("'\""))
    for option in named:
        from_env = os.environ.get("PIP_" + option.upper().replace("-", "_"))
        if from_env:
            named[option] += from_env.split()
    return (named["index-url"] or ["https://pypi.org/simple"]) + [
        *named["extra-index-url"],
        *named["find-links"],
    ]


def _reachable(location: str) -> bool:
    parsed = urlparse(location)
    if parsed.scheme in ("http", "https"):
        try:
            httpx.head(location, timeout=10, follow_redirects=True)
        except httpx.HTTPError:
            return False
        return True
    path = Path(parsed.path if parsed.scheme == "file" else location)
    return path.exists()


def _latest_version() -> str | None:
    """The release pip would install for the requirement, or None when it cannot say."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        done = _pip(
            "install",
            "--dry-run",
            "--quiet",
            "--no-deps",
            "--ignore-installed",
            "--report",
            str(report),
            REQUIREMENT,
        )
        if done.returncode != 0:
            return None
        [chosen] = json.loads(report.read_text())["install"]
        version: str = chosen["metadata"]["version"]
        return version


@pytest.fixture(scope="module")
def openai_v2() -> Path:
    """A folder holding the latest openai 2.x and its dependencies."""
    version = _latest_version()
    if version is None:
        cached = sorted(_cache_root().glob("openai-2.*/.installed"))
        if cached:
            return cached[-1].parent
        if not any(_reachable(location) for location in _indexes()):
            pytest.skip(f"pip reaches no package index ({', '.join(_indexes())}): {REQUIREMENT}")
        pytest.fail(f"pip reaches an index but cannot resolve {REQUIREMENT}")
    folder = _cache_root() / f"openai-{version}"
    if not (folder / ".installed").exists():
        done = _pip("install", "--quiet", "--target", str(folder), f"openai=={version}")
        assert done.returncode == 0, f"pip install failed into {folder}:\n{done.stderr[-3000:]}"
        (folder / ".installed").write_text(version)
    return folder


def run_clients(folder: Path, proxy: RunningProxy, tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "clients.py"
    script.write_text(SCRIPT)
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
        "STILLROOM_URL": proxy.url,
        "TICKET": TICKET,
        "INSTRUCTIONS": INSTRUCTIONS,
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"the openai 2.x clients failed:\n{done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_openai_v2_sdk_is_answered_and_every_exchange_is_captured(
    openai_v2: Path, proxy: RunningProxy, tmp_path: Path
) -> None:
    seen = run_clients(openai_v2, proxy, tmp_path)
    assert seen["version"].startswith("2."), seen["version"]
    assert seen["module"].startswith(str(openai_v2)), "the 2.x SDK, not the one installed here"
    answer = f"Answer to: {TICKET}"
    assert seen["plain"]["text"] == answer
    assert seen["stream"]["kinds"][0] == "response.created"
    assert seen["stream"]["kinds"][-1] == "response.completed"
    assert seen["stream"]["text"] == answer
    assert seen["parsed"] == {"category": "value of category", "urgent": "value of urgent"}
    assert seen["chat"] == answer

    exchanges = stored_exchanges(proxy.engine, 4)
    assert sorted((e.dialect, e.stream, e.status) for e in exchanges) == [
        ("chat", False, "ok"),
        ("responses", False, "ok"),
        ("responses", False, "ok"),
        ("responses", True, "ok"),
    ]
    assert {e.task for e in exchanges} == {"v2-tickets"}
    by_id = {e.response_id: e for e in exchanges if e.dialect == "responses"}
    for call in ("plain", "stream"):
        exchange = by_id[seen[call]["id"]]
        assert exchange.request["messages"] == [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": TICKET},
        ]
        assert exchange.response is not None
        assert exchange.response["choices"][0]["message"]["content"] == answer
    [parse] = [e for e in exchanges if e.request.get("response_format")]
    schema = parse.request["response_format"]["json_schema"]["schema"]
    assert set(schema["properties"]) == {"category", "urgent"}
