"""The extraction task of the benchmarks: a voice assistant's request parser on SNIPS.

A fake teacher answers each utterance (7 intents, ``--per-intent`` training pairs each)
under ``response_format: json_object`` with its gold annotation,
``{"intent": ..., "slots": {slot: words of the utterance}}``. The pairs go through the
product's curation (which reads the fields: the intent a label, every slot a span); the
extractor student is trained and judged on the held-out split, then served through a real
``stillroom proxy`` on new traffic (SNIPS validation utterances) with its calibrated
threshold. Figures: training time, held-out exact agreement and field F1, the share served
at the target exact agreement, per-request p50/p99 (alone, and through the proxy).

``bench/distill.py --task extraction`` prints the distillation figures,
``bench/router.py --task extraction`` adds the proxy's.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlmodel import Session

from core.agreement import json_field_f1, parse_json_object, score
from core.classifier import BUNDLED_ENCODER
from core.embedding import Encoder, default_embedding_model
from core.evaluation import TrainingProfile, VersionEvaluation
from core.store import create_store_engine, create_tables
from core.tables import Exchange, StudentHead, StudentVersion, Task
from core.wire import ChatCompletion, Usage
from distiller.candidates import Candidate, Judging, extractor_candidate
from distiller.curation import CuratedSet, CurationConfig, curate
from distiller.datasets import snips_answer, snips_nlu7

SYSTEM = (
    "You parse voice assistant requests. Answer with JSON: the intent (one of AddToPlaylist, "
    "BookRestaurant, GetWeather, PlayMusic, RateBook, SearchCreativeWork, "
    "SearchScreeningEvent) and the slots, each slot's words as they are in the request."
)
TASK = "voice-parser"
STILLROOM = str(Path(sys.executable).with_name("stillroom"))


def request(text: str) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        "response_format": {"type": "json_object"},
    }


def snips_exchanges(per_intent: int) -> list[Exchange]:
    """The teacher's answers to ``per_intent`` training utterances of each intent."""
    taken: dict[str, int] = {}
    exchanges: list[Exchange] = []
    for row in snips_nlu7()["train"]:
        if taken.get(row["intent"], 0) >= per_intent:
            continue
        taken[row["intent"]] = taken.get(row["intent"], 0) + 1
        message = {"role": "assistant", "content": json.dumps(snips_answer(row))}
        exchanges.append(
            Exchange(
                id=f"{len(exchanges):032x}",
                task=TASK,
                served_by="teacher",
                status="ok",
                http_status=200,
                request=request(row["text"]),
                response={"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]},
                latency_ms=0.0,
            )
        )
    return exchanges


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    ranked = sorted(seconds)
    return (
        round(1000 * statistics.median(ranked), 2),
        round(1000 * ranked[int(0.99 * (len(ranked) - 1))], 2),
    )


def distill(per_intent: int, target: float, work: Path) -> tuple[CuratedSet, Candidate]:
    exchanges = snips_exchanges(per_intent)
    curated = curate(exchanges, CurationConfig(), embed=Encoder().encode)
    print(
        f"extraction: curated {len(exchanges)} pairs: {len(curated.train)} train, "
        f"{len(curated.heldout)} held out, fields {curated.summary().get('fields')}",
        flush=True,
    )
    last = [0.0]

    def progress(p: Any) -> None:
        if time.monotonic() - last[0] > 10 or p.step == p.total_steps:
            last[0] = time.monotonic()
            print(f"  step {p.step}/{p.total_steps} loss {p.loss:.3f}", flush=True)

    candidate = extractor_candidate(
        curated=curated,
        name=f"{TASK}-v1",
        output_path=work / "extractor.bin",
        encoder_path=default_embedding_model(),
        encoder_name=BUNDLED_ENCODER,
        judging=Judging(target=target),
        on_progress=progress,
    )
    return curated, candidate


def distillation_figures(curated: CuratedSet, candidate: Candidate) -> dict[str, Any]:
    evaluation = candidate.evaluation
    p50, p99 = percentiles_ms(candidate.latencies)
    return {
        "kind": "extractor",
        "pairs": len(curated.train) + len(curated.heldout),
        "train": len(curated.train),
        "heldout": len(curated.heldout),
        "training_seconds": round(candidate.training_seconds, 1),
        "heldout_exact_agreement": round(evaluation.agreement, 4),
        "heldout_field_f1": round(evaluation.mean_score, 4),
        "share_at_target": round(evaluation.share_at_target, 4),
        "agreement_on_share": round(evaluation.calibration.retained_agreement, 4),
        "threshold": evaluation.calibration.threshold,
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "stored_mb": round(len(candidate.stored or b"") / 1e6, 1),
    }


def served_through_proxy(candidate: Candidate, limit: int) -> dict[str, Any]:
    """New traffic (SNIPS validation utterances), one request at a time, through a
    ``stillroom proxy`` process whose task has the extractor live at 100%, at its
    calibrated threshold. When none reached the target (the teacher would answer it all),
    the student answers everything, to measure what it costs per request and how often it
    agrees."""
    calibrated = candidate.evaluation.calibration.threshold
    threshold = calibrated if calibrated is not None else -1e9
    assert candidate.stored is not None
    work = Path(tempfile.mkdtemp(prefix="stillroom-extraction-bench-"))
    database = f"sqlite:///{work / 'stillroom.db'}"
    rows = snips_nlu7()["validate"][:limit]
    _publish(database, candidate.stored, threshold)
    answers = {row["text"]: json.dumps(snips_answer(row)) for row in rows}
    teacher_port, proxy_port = _free_port(), _free_port()
    teacher = uvicorn.Server(
        uvicorn.Config(_teacher(answers), port=teacher_port, log_level="warning")
    )
    threading.Thread(target=teacher.run, daemon=True).start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")},
        "STILLROOM_DATABASE_URL": database,
        "STILLROOM_DATA_DIR": str(work / "data"),
        "STILLROOM_TEACHER_URL": f"http://127.0.0.1:{teacher_port}/v1",
        "STILLROOM_LOG_LEVEL": "warning",
        "STILLROOM_TENANCY": "single",  # one team: the task published below is its own
    }
    proxy = subprocess.Popen(
        [STILLROOM, "proxy", "--port", str(proxy_port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{proxy_port}"
    try:
        _wait_up(url)
        with httpx.Client(base_url=url, timeout=60) as client:
            for row in rows[:10]:  # the first requests load the model
                _ask(client, row["text"])
            results = [(_ask(client, row["text"]), answers[row["text"]]) for row in rows]
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
        teacher.should_exit = True
    student = [(r, gold) for r, gold in results if r[0] == "student"]
    seconds = [r[2] for r, _ in student]
    p50, p99 = percentiles_ms(seconds) if seconds else (float("nan"), float("nan"))
    agreed = [score("json", r[1], gold).agrees for r, gold in student]
    f1 = [
        json_field_f1(parse_json_object(r[1]) or {}, parse_json_object(gold) or {})
        for r, gold in student
    ]
    return {
        "proxy_threshold": calibrated if calibrated is not None else "none: all answered",
        "proxy_requests": len(results),
        "proxy_share_on_student": round(len(student) / len(results), 4),
        "proxy_exact_agreement_on_student": round(sum(agreed) / len(agreed), 4) if agreed else None,
        "proxy_field_f1_on_student": round(sum(f1) / len(f1), 4) if f1 else None,
        "proxy_student_p50_ms": p50,
        "proxy_student_p99_ms": p99,
    }


def _publish(database: str, stored: bytes, threshold: float) -> None:
    engine = create_store_engine(database)
    create_tables(engine)
    version_id = uuid.uuid4().hex
    with Session(engine) as session:
        session.add(
            Task(
                name=TASK,
                mode="live",
                cutover_percent=100.0,
                audit_percent=0.0,
                active_version_id=version_id,
            )
        )
        session.add(
            StudentVersion(
                id=version_id,
                task=TASK,
                number=1,
                kind="extractor",
                state="published",
                base_model=BUNDLED_ENCODER,
                adapter_name=f"{TASK}-v1",
                adapter_path="-",
                metric="json",
                confidence_threshold=threshold,
                evaluation=VersionEvaluation(
                    profile=TrainingProfile(
                        models=["gpt-4o-mini"],
                        response_formats=["json_object"],
                        tools=False,
                        max_prompt_chars=2000,
                    )
                ).document(),
            )
        )
        session.add(StudentHead(version_id=version_id, data=stored))
        session.commit()
    engine.dispose()


def _ask(client: httpx.Client, text: str) -> tuple[str, str, float]:
    began = time.perf_counter()
    response = client.post(
        "/v1/chat/completions",
        json=request(text),
        headers={"x-stillroom-task": TASK, "authorization": "Bearer sk-bench"},
    )
    seconds = time.perf_counter() - began
    response.raise_for_status()
    content = response.json()["choices"][0]["message"]["content"]
    return response.headers["x-stillroom-served-by"], content, seconds


def _teacher(answers: dict[str, str]) -> Any:
    """A teacher answering each utterance with its gold JSON, in OpenAI's wire format."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        payload = json.loads(body or b"{}")
        text = (payload.get("messages") or [{}])[-1].get("content", "")
        completion = ChatCompletion.from_text(
            answers.get(text, '{"intent": "Unknown", "slots": {}}'),
            model="gpt-4o-mini",
            usage=Usage.of(80, 20),
        )
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": completion.model_dump_json().encode()})

    return app


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_up(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no proxy at {url}")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-intent", type=int, default=90)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--proxy", action="store_true", help="also serve through a proxy")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stillroom-extraction-"))
    curated, candidate = distill(args.per_intent, args.target, work)
    figures = distillation_figures(curated, candidate)
    if args.proxy:
        figures |= served_through_proxy(candidate, args.requests)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
