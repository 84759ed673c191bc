"""A classifier student answering inside the proxy: request latency through a real
``stillroom proxy`` at fixed rates of student traffic, with concurrent requests'
embeddings batched (the default: up to ``STILLROOM_EMBEDDING_BATCH_MAX``, 16, a call)
and one at a time (1), in one run.

A head is fitted here on CLINC150's 20 banking intents (the bundled MiniLM, as the
distiller fits it) and published as the live version of a task at 100% cutover, with a
threshold that lets it answer everything, so every request takes the student's path:
embedding, difficulty gate, head, answer. The requests are CLINC150's held-out
utterances, each different, sent open loop (on a fixed schedule) with ``httpx``. The
encoder alone (one prompt, one torch thread, in this process) is the reference: what
the proxy adds is the rest.

Run: ``.venv/bin/python bench/student_latency.py [--quick] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import torch
from fleet import STILLROOM, Fleet, Server, free_port, pin_self, stillroom_env
from loadgen import ms, percentile
from sqlmodel import Session

from core.classifier import encoder_id
from core.embedding import Encoder
from core.evaluation import TrainingProfile, VersionEvaluation
from core.profile import prompt_key
from core.store import create_store_engine, create_tables
from core.tables import StudentHead, StudentVersion, Task
from distiller.classifier import train_classifier
from distiller.curation import Example
from distiller.datasets import clinc150_banking20

TASK = "banking"
SYSTEM = "Name the banking intent of the customer's message."
RATES = (50, 150)


def messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def publish(database: Path, encoder: Encoder) -> None:
    """Fit a head on the training split and make it the task's live version."""
    rows = clinc150_banking20()["train"]
    examples = [
        Example(uuid.uuid4().hex, messages(text), intent, prompt_key(messages(text)))
        for text, intent in rows
    ]
    head = train_classifier(examples, embed=encoder.encode, encoder=encoder_id(None)).head
    engine = create_store_engine(f"sqlite:///{database}")
    create_tables(engine)
    version = uuid.uuid4().hex
    profile = TrainingProfile(
        models=["gpt-4o-mini"], response_formats=["text"], tools=False, max_prompt_chars=4000
    )
    with Session(engine) as session:
        session.add(
            Task(
                name=TASK,
                mode="live",
                cutover_percent=100.0,
                audit_percent=0.0,
                shadow_percent=0.0,
                active_version_id=version,
            )
        )
        session.add(
            StudentVersion(
                id=version,
                task=TASK,
                number=1,
                kind="classifier",
                state="published",
                base_model=head.encoder,
                adapter_name=f"{TASK}-v1",
                adapter_path="-",
                metric="label",
                confidence_threshold=-1e9,  # answer everything: every request is the student's
                evaluation=VersionEvaluation(profile=profile).document(),
            )
        )
        session.add(StudentHead(version_id=version, data=head.to_bytes()))
        session.commit()
    engine.dispose()


def start_proxy(fleet: Fleet, teacher: Server, folder: Path, batch_max: int) -> Server:
    env = stillroom_env(teacher, folder)
    env["STILLROOM_EMBEDDING_BATCH_MAX"] = str(batch_max)
    port = free_port()
    argv = [STILLROOM, "proxy", "--host", "127.0.0.1", "--port", str(port)]
    return fleet.start(f"proxy-batch-{batch_max}", argv, env, port)


async def ask(client: httpx.AsyncClient, text: str) -> tuple[float, str] | None:
    body = {"model": "gpt-4o-mini", "messages": messages(text)}
    began = time.perf_counter()
    try:
        answer = await client.post("/v1/chat/completions", json=body)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    return time.perf_counter() - began, answer.headers.get("x-stillroom-served-by", "")


async def student_phase(proxy: Server, rate: int, seconds: float) -> dict[str, Any]:
    texts = [text for text, _ in clinc150_banking20()["test"]]
    headers = {"x-stillroom-task": TASK, "authorization": "Bearer sk-bench"}
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(
        base_url=proxy.url, headers=headers, limits=limits, timeout=10.0, trust_env=False
    ) as client:
        for text in texts[:20]:  # warm: the encoder loads, the head is read
            await ask(client, text)
        count = round(rate * seconds)
        began = time.perf_counter() + 0.01
        tasks = []
        for i in range(count):
            wait = began + i / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(ask(client, texts[i % len(texts)])))
        results = await asyncio.gather(*tasks)
    ok = [r for r in results if r is not None]
    latencies = [seconds for seconds, _ in ok]
    return {
        "rate": rate,
        "requests": count,
        "errors": count - len(ok),
        "student_share": round(sum(by == "student" for _, by in ok) / max(1, len(ok)), 4),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
    }


def encoder_alone(encoder: Encoder, n: int = 200) -> dict[str, float]:
    texts = [prompt_key(messages(text)) for text, _ in clinc150_banking20()["test"][:n]]
    seconds = []
    for text in texts:
        began = time.perf_counter()
        encoder.encode([text])
        seconds.append(time.perf_counter() - began)
    return {"p50_ms": ms(percentile(seconds, 50)), "p99_ms": ms(percentile(seconds, 99))}


def run(quick: bool) -> dict[str, Any]:
    pin_self()
    seconds = 4.0 if quick else 10.0
    encoder = Encoder(threads=1)
    figures: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="stillroom-student-") as tmp, Fleet(Path(tmp)) as fleet:
        folder = Path(tmp) / "store"
        folder.mkdir()
        publish(folder / "bench.db", encoder)
        figures["encoder_alone"] = encoder_alone(encoder)
        torch.set_num_threads(1)
        teacher = fleet.teacher()
        phases = []
        for batch_max in (16, 1):
            proxy = start_proxy(fleet, teacher, folder, batch_max)
            with asyncio.Runner() as runner:
                for rate in RATES:
                    phase = runner.run(student_phase(proxy, rate, seconds))
                    phases.append({"batch_max": batch_max, **phase})
            fleet.stop(proxy)
        figures["phases"] = phases
    return figures


def report(figures: dict[str, Any]) -> str:
    alone = figures["encoder_alone"]
    lines = [
        f"classifier student through the proxy, {figures['date']}",
        f"  encoder alone (one prompt, one thread): p50 {alone['p50_ms']:.2f} ms, "
        f"p99 {alone['p99_ms']:.2f} ms",
        f"  {'batch of':<14}{'req/s':>6}{'err':>5}{'student':>9}{'p50 ms':>9}{'p99 ms':>9}",
    ]
    for p in figures["phases"]:
        lines.append(
            f"  {p['batch_max']:>5} max     {p['rate']:>6}{p['errors']:>5}"
            f"{100 * p['student_share']:>8.1f}%{p['p50_ms']:>9.2f}{p['p99_ms']:>9.2f}"
        )
    at50 = next(p for p in figures["phases"] if p["rate"] == 50 and p["batch_max"] > 1)
    for name, value, limit in (("p50", at50["p50_ms"], 8.0), ("p99", at50["p99_ms"], 15.0)):
        mark = "met   " if value <= limit else "MISSED"
        lines.append(f"  [{mark}] {name} at 50 req/s {value:.2f} ms (aim <= {limit:g} ms)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="A classifier student through the proxy.")
    parser.add_argument("--quick", action="store_true", help="4 s a phase instead of 10")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write figures here")
    args = parser.parse_args()
    figures = run(args.quick)
    print(report(figures), flush=True)
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
