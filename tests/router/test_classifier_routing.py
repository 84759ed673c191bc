"""Routing to a classifier student: answered inside the proxy, in the teacher's own words,
with its calibrated probability as the confidence; anything it was not trained for, or is
unsure of, goes to the teacher. Real proxy, real MiniLM, the `openai` SDK as the client."""

from __future__ import annotations

import dataclasses
import math
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from core.classifier import BUNDLED_ENCODER, Head
from core.embedding import Encoder
from core.profile import prompt_key
from core.settings import Settings
from core.store import create_store_engine, create_tables
from core.tables import ShadowResult, StudentHead
from distiller.candidates import Judging, classifier_candidate
from distiller.curation import CuratedSet, Example
from distiller.datasets import clinc150_banking20
from router.classifier import ClassifierStudent
from router.policy import Mode, Policy, StudentRef

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from routing_support import (
    INTENT_SYSTEM,
    OUT_OF_SCOPE,
    TASK,
    clinc_rows,
    clinc_teacher,
    publish_classifier,
    spoken,
)
from servers import wait_until
from wire_schema import validate_chat_completion, validate_sse_stream

INTENTS = clinc150_banking20()["intents"][:10]
ANSWERS = {spoken(intent) for intent in INTENTS}


@dataclass(frozen=True)
class Trained:
    head: Head
    threshold: float


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A head fitted on 40 utterances of each of 10 intents, calibrated on 20 more."""

    def examples(split: str, per_intent: int) -> list[Example]:
        chosen = []
        for text, answer in clinc_rows(split, INTENTS, per_intent):
            messages = [INTENT_SYSTEM, {"role": "user", "content": text}]
            chosen.append(Example(uuid.uuid4().hex, messages, answer, prompt_key(messages)))
        return chosen

    curated = CuratedSet("label", examples("train", 40), examples("val", 20), Counter())
    candidate = classifier_candidate(
        curated=curated,
        name=f"{TASK}-v1",
        output_path=tmp_path_factory.mktemp("head") / "head.npz",
        encoder=Encoder(),
        encoder_name=BUNDLED_ENCODER,
        judging=Judging(target=0.95),
    )
    threshold = candidate.evaluation.calibration.threshold
    assert threshold is not None
    return Trained(candidate.head, threshold)


@pytest.fixture
def classified_proxy(
    teacher: FakeTeacher,
    trained: Trained,
    sqlite_url: str,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> Callable[..., RunningProxy]:
    """A proxy whose task has a live classifier version, and no student server at all."""
    teacher.responder = clinc_teacher

    def start(**overrides: Any) -> RunningProxy:
        publish_classifier(sqlite_url, trained.head, number=1, threshold=trained.threshold)
        values = {
            "teacher_url": teacher.url + "/v1",
            "student_url": "http://127.0.0.1:9",  # nothing listens: no hop may be needed
            "policy_refresh_seconds": 0.2,
        }
        values.update(overrides)
        proxy = start_proxy(make_settings(**values))
        apply(proxy, mode="live", cutover_percent=100, audit_percent=0)
        return proxy

    return start


def apply(proxy: RunningProxy, **changes: Any) -> None:
    """Change the task's policy through the admin API; return once the proxy routes by it."""
    before = proxy.runtime.policies.get(TASK)
    response = httpx.patch(proxy.url + f"/admin/tasks/{TASK}", json=changes, timeout=30)
    assert response.status_code == 200, response.text
    wait_until(lambda: proxy.runtime.policies.get(TASK) != before, timeout=30)


def ask(proxy: RunningProxy, text: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        proxy.url + "/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": [INTENT_SYSTEM, {"role": "user", "content": text}],
            **extra,
        },
        headers={"x-stillroom-task": TASK, "authorization": "Bearer sk-client"},
        timeout=30,
    )


def routing_count(proxy: RunningProxy, reason: str) -> float:
    metrics = httpx.get(proxy.url + "/metrics").text
    line = f'stillroom_routing_decisions_total{{reason="{reason}",task="{TASK}"}} '
    found = [row for row in metrics.splitlines() if row.startswith(line)]
    return float(found[0].removeprefix(line)) if found else 0.0


def test_classifier_answers_new_traffic_with_the_teachers_exact_strings(
    classified_proxy: Callable[..., RunningProxy], teacher: FakeTeacher
) -> None:
    proxy = classified_proxy()
    client = proxy.client()
    rows = clinc_rows("test", INTENTS, 4)
    served, agreed = 0, 0
    for text, answer in rows:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[INTENT_SYSTEM, {"role": "user", "content": text}],  # type: ignore[list-item]
            extra_headers={"X-Stillroom-Task": TASK},
        )
        content = raw.parse().choices[0].message.content
        if raw.headers["x-stillroom-served-by"] == "student":
            served += 1
            agreed += content == answer
            assert content in ANSWERS
            assert raw.headers["x-stillroom-student-version"] == "v1"
        else:
            assert content == answer  # the teacher's, passed on
    assert served / len(rows) >= 0.8
    assert agreed / served >= 0.9
    assert len(teacher.chat_requests()) == len(rows) - served


def test_logprobs_are_the_calibrated_probability_of_the_label(
    classified_proxy: Callable[..., RunningProxy], trained: Trained
) -> None:
    proxy = classified_proxy()
    text, answer = clinc_rows("test", INTENTS, 1)[0]
    response = ask(proxy, text, logprobs=True, top_logprobs=3)
    assert response.headers["x-stillroom-served-by"] == "student"
    body = response.json()
    validate_chat_completion(body)
    choice = body["choices"][0]
    assert choice["message"]["content"] == answer
    [token] = choice["logprobs"]["content"]
    assert token["token"] == answer
    assert bytes(token["bytes"]).decode() == answer
    assert trained.threshold <= token["logprob"] <= 0.0
    alternatives = token["top_logprobs"]
    assert alternatives[0]["token"] == answer
    assert len(alternatives) == 3
    assert sum(math.exp(a["logprob"]) for a in alternatives) <= 1.0 + 1e-9
    assert body["usage"]["completion_tokens"] >= 1
    plain = ask(proxy, text).json()
    assert plain["choices"][0]["logprobs"] is None


def test_classifier_answer_streams_as_a_normal_openai_stream(
    classified_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = classified_proxy()
    text, answer = clinc_rows("test", INTENTS, 1)[0]
    chunks = list(
        proxy.client().chat.completions.create(
            model="gpt-4o-mini",
            messages=[INTENT_SYSTEM, {"role": "user", "content": text}],  # type: ignore[list-item]
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Stillroom-Task": TASK},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].usage is not None
    raw = ask(proxy, text, stream=True)
    assert raw.headers["x-stillroom-served-by"] == "student"
    validate_sse_stream(raw.content)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_requests_the_classifier_was_not_trained_for_go_to_the_teacher(
    classified_proxy: Callable[..., RunningProxy], extra: dict[str, Any], reason: str
) -> None:
    proxy = classified_proxy()
    text, _ = clinc_rows("test", INTENTS, 1)[0]
    assert ask(proxy, text, **extra).headers["x-stillroom-served-by"] == "teacher"
    assert routing_count(proxy, reason) == 1


def test_inputs_unlike_the_training_set_are_escalated_to_the_teacher(
    classified_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = classified_proxy()
    out_of_scope = clinc150_banking20()["oos"][:30]
    served = []
    for text in out_of_scope:
        response = ask(proxy, text)
        served.append(response.headers["x-stillroom-served-by"])
        if served[-1] == "fallback":
            assert response.json()["choices"][0]["message"]["content"] == OUT_OF_SCOPE
    assert Counter(served)["fallback"] >= 0.8 * len(out_of_scope)
    assert routing_count(proxy, "unfamiliar") > 0


def test_answers_below_the_confidence_threshold_are_escalated_to_the_teacher(
    classified_proxy: Callable[..., RunningProxy], teacher: FakeTeacher
) -> None:
    proxy = classified_proxy()
    text, answer = clinc_rows("test", INTENTS, 1)[0]
    assert ask(proxy, text).headers["x-stillroom-served-by"] == "student"
    apply(proxy, confidence_threshold=math.log(1 - 1e-12))
    unsure = ask(proxy, text)
    assert unsure.headers["x-stillroom-served-by"] == "fallback"
    assert unsure.json()["choices"][0]["message"]["content"] == answer
    assert routing_count(proxy, "low_confidence") == 1
    assert len(teacher.chat_requests()) == 1
    apply(proxy, confidence_threshold=None)
    assert ask(proxy, text).headers["x-stillroom-served-by"] == "student"


def test_shadow_scores_the_classifier_against_the_teacher(
    classified_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = classified_proxy()
    apply(proxy, mode="shadow", shadow_percent=100)
    rows = clinc_rows("test", INTENTS, 1)[:5]
    for text, _ in rows:
        assert ask(proxy, text).headers["x-stillroom-served-by"] == "teacher"

    def scored() -> list[ShadowResult]:
        with Session(proxy.engine) as session:
            return list(session.exec(select(ShadowResult)).all())

    wait_until(lambda: len(scored()) == len(rows), timeout=20)
    results = scored()
    assert {r.kind for r in results} == {"shadow"}
    assert {r.teacher_answer for r in results} <= ANSWERS
    assert {r.student_answer for r in results} <= ANSWERS
    assert sum(r.agrees for r in results) >= 4
    assert all(r.confidence is not None and r.confidence <= 0 for r in results)


def test_audit_asks_the_teacher_about_classifier_answers(
    classified_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = classified_proxy()
    apply(proxy, audit_percent=100)
    text, _ = clinc_rows("test", INTENTS, 1)[0]
    assert ask(proxy, text).headers["x-stillroom-served-by"] == "student"

    def audits() -> list[ShadowResult]:
        with Session(proxy.engine) as session:
            return list(session.exec(select(ShadowResult)).all())

    wait_until(lambda: len(audits()) == 1, timeout=20)
    [audit] = audits()
    assert (audit.kind, audit.agrees) == ("audit", True)


def test_a_new_version_takes_over_between_two_requests_never_within_one(
    classified_proxy: Callable[..., RunningProxy], trained: Trained, sqlite_url: str
) -> None:
    proxy = classified_proxy()
    shouted = dataclasses.replace(
        trained.head, answers=tuple(answer.upper() for answer in trained.head.answers)
    )
    rows = clinc_rows("test", INTENTS, 2)
    seen: list[tuple[str, str, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=30) as client:
            n = 0
            while not stop.is_set():
                text, _ = rows[n % len(rows)]
                n += 1
                response = client.post(
                    proxy.url + "/v1/chat/completions",
                    json={
                        "model": "gpt-4o-mini",
                        "messages": [INTENT_SYSTEM, {"role": "user", "content": text}],
                    },
                    headers={"x-stillroom-task": TASK},
                )
                assert response.status_code == 200
                seen.append(
                    (
                        response.headers["x-stillroom-served-by"],
                        response.headers.get("x-stillroom-student-version", ""),
                        response.json()["choices"][0]["message"]["content"],
                    )
                )

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        wait_until(lambda: len(seen) >= 5, timeout=30)
        publish_classifier(sqlite_url, shouted, number=2, threshold=trained.threshold)
        wait_until(lambda: any(version == "v2" for _, version, _ in seen[-1:]), timeout=30)
        before = len(seen)
        wait_until(lambda: len(seen) >= before + 5, timeout=30)
    finally:
        stop.set()
        sender.join(timeout=30)
    by_student = [(version, text) for served, version, text in seen if served == "student"]
    assert all(
        (version == "v1" and text in ANSWERS) or (version == "v2" and text.isupper())
        for version, text in by_student
    )
    versions = [version for version, _ in by_student]
    switched = versions.index("v2")
    assert set(versions[switched:]) == {"v2"}
    assert set(versions[:switched]) == {"v1"}


def classifier_version(number: int, mode: Mode = "live") -> tuple[Policy, StudentRef]:
    student = StudentRef(uuid.uuid4().hex, number, "classifier", f"{TASK}-v{number}", "label", -1.0)
    return Policy(task=f"{TASK}-{number}", mode=mode, student=student), student


async def test_each_proxy_keeps_a_bounded_number_of_heads_loaded_ahead_of_use(
    trained: Trained, tmp_path: Path
) -> None:
    engine = create_store_engine(f"sqlite:///{tmp_path / 'store.db'}")
    create_tables(engine)
    refs = [classifier_version(n) for n in range(1, 4)]
    off_policy, off_student = classifier_version(4, mode="off")
    with Session(engine) as session:
        for _, student in [*refs, (off_policy, off_student)]:
            session.add(StudentHead(version_id=student.version_id, data=trained.head.to_bytes()))
        session.commit()
    classifiers = ClassifierStudent(
        engine=engine, encoder=Encoder(), encoder_name=BUNDLED_ENCODER, max_heads=2
    )
    await classifiers.prepare({p.task: p for p, _ in refs[:2]} | {off_policy.task: off_policy})
    assert classifiers.loaded == [refs[0][1].version_id, refs[1][1].version_id]
    await classifiers.head(refs[2][1].version_id)
    assert classifiers.loaded == [refs[1][1].version_id, refs[2][1].version_id]
    engine.dispose()
