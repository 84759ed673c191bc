"""``stillroom demo``: a simulated teacher, ``stillroom serve`` on it, an app sending it
traffic, the live view, and the report at the end.

The product runs as it would for a user: ``stillroom serve`` in a process of its own (proxy,
distiller and embedded student server) with the settings below; the demo only plays the
teacher and the app, turns auto-ramp on for the task through the admin API, and watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import uvicorn
from rich.console import Console
from rich.live import Live
from rich.table import Table

from core.settings import Settings
from core.store import create_store_engine
from core.tenants import key_hash, task_key
from distiller.datasets import clinc150_banking20
from distiller.tiny_model import build_tiny_model
from proxy.demo import report
from proxy.demo.teacher import IntentTeacher, Latency, create_teacher_app, system_prompt
from proxy.demo.traffic import API_KEY, TASK, App, TrafficStats
from proxy.demo.view import ProgressLines, State, render
from proxy.gateway.tenancy import request_tenant
from proxy.processes.environment import settings_environment

console = Console()


@dataclass(frozen=True)
class Profile:
    """How hard and how long the demo drives the product."""

    rate: float  # app requests per second
    teacher_latency: float  # median seconds before the teacher answers
    first_pairs: int  # curated pairs before the first training
    ramp_min_pairs: int  # scored pairs each auto-ramp stage needs
    final_requests: int  # requests served at live 100% before the report
    minutes: float  # the demo ends by then whatever the stage
    lora_epochs: int
    audit_percent: float


# The LoRA side of the tournament trains one epoch to fit the demo's minutes (the product's
# default is 3); a classifier wins this label task either way.
FULL = Profile(20.0, 0.6, 700, 200, 2000, 10.0, 1, 5.0)
FAST = Profile(40.0, 0.04, 800, 100, 400, 6.0, 1, 10.0)
OTHER_SHARE = 0.04  # of the app's messages are out of scope for the task


@dataclass(frozen=True)
class DemoOptions:
    directory: Path
    port: int
    fast: bool = False
    keep_serving: bool = True
    rate: float | None = None
    minutes: float | None = None

    @property
    def profile(self) -> Profile:
        base = FAST if self.fast else FULL
        return Profile(
            **{
                **asdict(base),
                **({"rate": self.rate} if self.rate else {}),
                **({"minutes": self.minutes} if self.minutes else {}),
            }
        )


def run_demo(options: DemoOptions) -> report.Figures:
    """Runs the demo to its report; then, with ``keep_serving``, until Ctrl-C."""
    return asyncio.run(_Demo(options).run())


class _Demo:
    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.profile = options.profile
        self.directory = options.directory.resolve()
        self.phases: list[tuple[datetime, str]] = []  # when each phase was first seen
        self.final_since: datetime | None = None
        self.phase_started = time.monotonic()
        self.serve: subprocess.Popen[bytes] | None = None

    async def run(self) -> report.Figures:
        data = clinc150_banking20()
        teacher = IntentTeacher(data["train"] + data["val"] + data["test"])
        app_server = _teacher_server(teacher, self.profile)
        teacher_task = asyncio.create_task(app_server.serve())
        try:
            for _ in range(1000):
                if app_server.started:
                    break
                await asyncio.sleep(0.01)
            teacher_port = app_server.config.port
            settings = self._settings(f"http://127.0.0.1:{teacher_port}/v1")
            self.serve = self._start_serve(settings)
            base_url = f"http://127.0.0.1:{self.options.port}"
            await _wait_ready(base_url, self.serve, self.directory / "serve.log")
            figures = await self._drive(settings, base_url, data)
            if self.options.keep_serving:
                _print_snippet(base_url, data["intents"], self.directory)
                await _wait_for_interrupt()
            return figures
        finally:
            if self.serve is not None:
                self.serve.send_signal(signal.SIGINT)
                try:
                    self.serve.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.serve.kill()
            app_server.should_exit = True
            await teacher_task

    def _settings(self, teacher_url: str) -> Settings:
        """A fresh store for this run; the converted base model is kept between runs."""
        self.directory.mkdir(parents=True, exist_ok=True)
        data_dir = self.directory / "data"
        for old in [*self.directory.glob("stillroom.db*"), *data_dir.glob("*")]:
            if old.name == "base-models":
                continue
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        base_model = None
        if self.options.fast:
            base_model = str(build_tiny_model(self.directory / "tiny-model"))
        p = self.profile
        return Settings(
            teacher_url=teacher_url,
            database_url=f"sqlite:///{self.directory / 'stillroom.db'}",
            data_dir=data_dir,
            base_model=base_model,
            port=self.options.port,
            distill_first_pairs=p.first_pairs,
            distill_new_pairs=100_000,  # one training in the demo's few minutes
            distill_interval_seconds=2.0,
            drift_check_seconds=2.0,
            ramp_min_pairs=p.ramp_min_pairs,
            lora_epochs=p.lora_epochs,
            log_level="warning",
        )

    def _start_serve(self, settings: Settings) -> subprocess.Popen[bytes]:
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")
        } | settings_environment(settings)
        log = (self.directory / "serve.log").open("wb")
        command = [sys.executable, "-c", "from proxy.cli.main import main; main()", "serve"]
        return subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)

    async def _drive(
        self, settings: Settings, base_url: str, data: dict[str, Any]
    ) -> report.Figures:
        messages = [text for text, _ in data["train"] + data["val"] + data["test"]]
        others = list(data["oos"])
        # Out-of-scope messages make up OTHER_SHARE of what the app sends.
        repeat = max(1, round(OTHER_SHARE * len(messages) / max(1, len(others))))
        app = App(
            base_url=f"{base_url}/v1",
            system=system_prompt(data["intents"]),
            messages=messages + others * repeat,
            rate=self.profile.rate,
        )
        stop = asyncio.Event()
        traffic = asyncio.create_task(app.run(stop))
        state = State(pairs_needed=self.profile.first_pairs)
        started = time.monotonic()
        deadline = started + 60 * self.profile.minutes
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as admin:
            with live_view(console, state, app.stats) as show:
                while time.monotonic() < deadline and not traffic.done():
                    await asyncio.sleep(0.5)
                    state.elapsed = time.monotonic() - started
                    await self._observe(admin, state)
                    show()
                    if self._finished(state, app):
                        break
                stop.set()
                await traffic
                show(final=True)
        if app.stats.last_error:
            console.print(f"[yellow]last request error: {app.stats.last_error}[/yellow]")
        await asyncio.sleep(2 * settings.capture_flush_seconds + 1.0)
        return self._report(settings)

    async def _observe(self, admin: httpx.AsyncClient, state: State) -> None:
        response = await admin.get(f"/admin/tasks/{TASK}")
        if response.status_code == 404:
            return
        response.raise_for_status()
        first = state.task is None
        state.task = response.json()
        if first:
            # As an operator would: let the task earn its traffic on its own.
            await admin.patch(
                f"/admin/tasks/{TASK}",
                json={"auto_ramp": True, "audit_percent": self.profile.audit_percent},
            )
        runs = (await admin.get(f"/admin/tasks/{TASK}/runs")).json()["data"]
        state.run = runs[0] if runs else None
        phase = state.phase.split(":")[0] if state.phase.startswith("training") else state.phase
        if not self.phases or self.phases[-1][1] != phase:
            self.phases.append((datetime.now(UTC), phase))
            self.phase_started = time.monotonic()
            if phase == "live 100%":
                self.final_since = datetime.now(UTC)

    def _finished(self, state: State, app: App) -> bool:
        if state.phase != "live 100%":
            return False
        answered = sum(1 for s in app.stats.window if s.at >= self.phase_started)
        return answered >= self.profile.final_requests

    def _report(self, settings: Settings) -> report.Figures:
        engine = create_store_engine(settings.database_url)
        try:
            # The app's requests are its key's tenant's task (the default one's in single
            # tenancy): the store holds them under that task's key.
            key = task_key(TASK, request_tenant(key_hash(API_KEY), settings))
            figures = report.collect(engine, settings, key, final_since=self.final_since)
        finally:
            engine.dispose()
        phases = [(report.seconds_since_start(figures, at), name) for at, name in self.phases]
        chart = report.draw_chart(figures, phases, self.directory / "report.png")
        text = report.markdown(figures, settings=settings, phases=phases, chart=chart.name)
        (self.directory / "report.md").write_text(text)
        (self.directory / "report.json").write_text(
            json.dumps({**asdict(figures), "phases": phases}, indent=2, default=str)
        )
        table = Table("figure", "value", title=f"stillroom demo: {TASK}")
        for name, value in report.summary_rows(figures):
            table.add_row(name, value)
        console.print(table)
        console.print(f"report: {self.directory / 'report.md'} and {chart}")
        return figures


class Show(Protocol):
    def __call__(self, *, final: bool = False) -> None:
        """Show the state as it is now (``final``: the last time)."""


@contextlib.contextmanager
def live_view(out: Console, state: State, stats: TrafficStats) -> Iterator[Show]:
    """The live view on ``out``: a panel redrawn in place on a terminal; otherwise (a pipe,
    a file, a CI log) plain lines, one per phase change and a progress line every few
    seconds, each written as it happens."""
    if out.is_terminal:
        with Live(render(state, stats), console=out, refresh_per_second=4) as live:

            def redraw(*, final: bool = False) -> None:
                live.update(render(state, stats))

            yield redraw
        return
    lines = ProgressLines()

    def write(*, final: bool = False) -> None:
        for line in lines.lines(state, stats, final=final):
            out.print(line, highlight=False, markup=False, soft_wrap=True)

    write()
    yield write


def _teacher_server(teacher: IntentTeacher, profile: Profile) -> uvicorn.Server:
    config = uvicorn.Config(
        create_teacher_app(teacher, Latency(profile.teacher_latency)),
        host="127.0.0.1",
        port=_free_port(),
        log_level="warning",
        lifespan="off",
    )
    return uvicorn.Server(config)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _wait_ready(base_url: str, serve: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if serve.poll() is not None:
                tail = (await asyncio.to_thread(log.read_text))[-3000:]
                raise RuntimeError(f"stillroom serve exited ({serve.returncode}):\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{base_url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.25)
    raise RuntimeError(f"stillroom serve did not become ready; see {log}")


_TRY_IT = """\
# Ask the demo's stillroom a question, as an app would. Usage: python try_it.py "message"
import sys

from openai import OpenAI

client = OpenAI(
    base_url="{base_url}/v1",
    api_key="{api_key}",
    default_headers={{"X-Stillroom-Task": "{task}"}},
)
raw = client.chat.completions.with_raw_response.create(
    model="gpt-4o",
    messages=[
        {{"role": "system", "content": {system!r}}},
        {{"role": "user", "content": " ".join(sys.argv[1:]) or "I think someone stole my card"}},
    ],
)
print(raw.headers["x-stillroom-served-by"], raw.parse().choices[0].message.content)
"""


def _print_snippet(base_url: str, intents: list[str], directory: Path) -> None:
    script = directory / "try_it.py"
    script.write_text(
        _TRY_IT.format(base_url=base_url, api_key=API_KEY, task=TASK, system=system_prompt(intents))
    )
    console.print(
        f"\nstillroom is still running on {base_url}/v1. Point your own openai client at it "
        f"with the demo app's key {API_KEY} (another key is another tenant, with tasks of "
        f"its own) and the header X-Stillroom-Task: {TASK}, or run:\n\n  python {script} "
        '"my card was declined"\n\nPress Ctrl-C to stop.',
        highlight=False,
    )


async def _wait_for_interrupt() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
