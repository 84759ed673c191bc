"""The proxy's tail while a student trains: ``stillroom serve`` under open-loop load, idle
and then during a training run, in one run.

The store is seeded with a label-like task (CLINC150 banking intents, as the teacher
would have answered them) and ``serve`` runs on the tiny test model (its LoRA trains in
seconds a epoch on a CPU; the epochs are raised so that the run outlasts the phase) with
both student kinds. Phases at :data:`RATE` requests a second of chat completions (capture
on): idle, then from the moment the run is ``running``; the figure is the ratio of the two
p99s. The training share says how much of the second phase the run was still going.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from fleet import STILLROOM, Fleet, Server, free_port, stillroom_env
from loadgen import SETTLE_SECONDS, open_loop

from core.store import create_store_engine, create_tables, insert_exchanges
from core.tables import ExchangeCreate
from distiller.datasets import clinc150_banking20
from distiller.tiny_model import build_tiny_model

RATE = 200
WARM_SECONDS = 5.0
STUDENT_START_SECONDS = 180.0
TASK = "bench-training"
PAIRS = 600
LORA_EPOCHS = 40
FINISHED = ("published", "rejected", "failed", "succeeded")


def seed(database: Path) -> None:
    rows = clinc150_banking20()["train"][:PAIRS]
    engine = create_store_engine(f"sqlite:///{database}")
    create_tables(engine)
    insert_exchanges(engine=engine, exchanges=[_exchange(text, intent) for text, intent in rows])
    engine.dispose()


def _exchange(text: str, intent: str) -> ExchangeCreate:
    return ExchangeCreate(
        id=uuid.uuid4().hex,
        task=TASK,
        served_by="teacher",
        status="ok",
        http_status=200,
        model="gpt-4o-mini",
        request={
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Name the banking intent of the message."},
                {"role": "user", "content": text},
            ],
        },
        response={
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": intent},
                    "finish_reason": "stop",
                }
            ]
        },
        latency_ms=400.0,
    )


def start_serve(fleet: Fleet, teacher: Server) -> tuple[Server, str]:
    """``stillroom serve`` on a seeded store, and the URL of its embedded student server."""
    folder = fleet.workdir / "serve"
    folder.mkdir()
    seed(folder / "bench.db")
    port, student_port = free_port(), free_port()
    env = stillroom_env(teacher, folder)
    env |= {
        "STILLROOM_BASE_MODEL": str(build_tiny_model(fleet.workdir / "tiny-model")),
        "STILLROOM_DISTILL_FIRST_PAIRS": "1000000",  # trained on demand only
        "STILLROOM_LORA_EPOCHS": str(LORA_EPOCHS),
        "STILLROOM_STUDENT_KINDS": "lora,classifier",
    }
    argv = [STILLROOM, "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--student-port", str(student_port)]
    serve = fleet.start("serve", argv, env, port, where="all", timeout=180.0)
    return serve, f"http://127.0.0.1:{student_port}"


async def _run_state(client: httpx.AsyncClient, run_id: str) -> str:
    answer = await client.get(f"/admin/tasks/{TASK}/runs/{run_id}")
    answer.raise_for_status()
    state: str = answer.json()["state"]
    return state


async def _student_server_up(url: str) -> None:
    """Wait for the embedded student server: ``serve`` loads its base model in a thread of
    the proxy's process at start, which is start-up, not the steady state measured here."""
    deadline = time.monotonic() + STUDENT_START_SECONDS
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url + "/v1/models")).status_code == 200:
                    return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"the embedded student server at {url} did not come up")


async def training_phases(serve: Server, student_url: str, seconds: float) -> dict[str, Any]:
    """p99 of ``serve`` at :data:`RATE` req/s idle, then while a training run goes on."""
    await _student_server_up(student_url)
    await open_loop("serve warm-up", serve, RATE, WARM_SECONDS)  # start-up work settles
    idle = await open_loop("serve idle", serve, RATE, seconds)
    async with httpx.AsyncClient(base_url=serve.url, timeout=30.0, trust_env=False) as client:
        queued = await client.post(f"/admin/tasks/{TASK}/train")
        queued.raise_for_status()
        run_id = queued.json()["id"]
        began = time.monotonic()
        while (state := await _run_state(client, run_id)) == "queued":
            if time.monotonic() - began > 60:
                raise RuntimeError("the training run was not claimed within a minute")
            await asyncio.sleep(0.2)
        started = time.monotonic()
        finished: list[float] = []

        async def watch() -> None:
            while not finished:
                await asyncio.sleep(0.5)
                if await _run_state(client, run_id) in FINISHED:
                    finished.append(time.monotonic() - started)

        watcher = asyncio.create_task(watch())
        training = await open_loop("serve training", serve, RATE, seconds)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        state = await _run_state(client, run_id)
    await asyncio.sleep(SETTLE_SECONDS)
    share = min(1.0, finished[0] / seconds) if finished else 1.0
    return {
        "rate": RATE,
        "seconds": seconds,
        "idle": asdict(idle),
        "training": asdict(training),
        "p99_ratio": round(training.p99_ms / idle.p99_ms, 2),
        "run_state": state,
        "training_share_of_phase": round(share, 2),
    }
