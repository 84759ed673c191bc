"""The router's pure parts, table by table: eligibility, sticky buckets, the gates, and the
whole decision over mode, cutover, eligibility and student kind (fake students, no
servers)."""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import pytest
from prometheus_client import CollectorRegistry

from core.metrics import SERVED_BY, Metrics
from core.wire import ChatCompletionRequest
from router.bucketing import bucket, in_cutover, route_key
from router.eligibility import LENGTH_SLACK, ineligible_reason
from router.gates import confident, output_problem
from router.policy import Mode, Policy, StudentRef
from router.reasons import REASONS, Ineligible, OutputProblem, ServedBy, as_ineligible
from router.route import Outcome, Router
from router.student import PromptEmbedding, StudentDeclined, StudentReply, StudentUnavailable

TASK = "intent"
PROFILE: dict[str, Any] = {
    "models": ["gpt-4o-mini"],
    "response_formats": ["json_object", "text"],
    "tools": False,
    "max_prompt_chars": 200,
}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "ticket",
        "schema": {
            "type": "object",
            "properties": {"intent": {"type": "string"}},
            "required": ["intent"],
        },
    },
}


def request(**extra: Any) -> tuple[ChatCompletionRequest, dict[str, Any]]:
    payload: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "my bill is wrong"}],
        **extra,
    }
    return ChatCompletionRequest.model_validate(payload), payload


def said(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


# --- eligibility ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "profile", "reason"),
    [
        ({}, PROFILE, None),
        ({"n": 1}, PROFILE, None),
        ({"n": 2}, PROFILE, "n"),
        ({"tools": TOOLS}, PROFILE, "tools"),
        ({"tools": TOOLS}, {**PROFILE, "tools": True}, None),
        ({"messages": said({"type": "text", "text": "hi"})}, PROFILE, None),
        ({"messages": said({"type": "image_url", "image_url": {"url": "x"}})}, PROFILE, "media"),
        ({"messages": said({"type": "input_audio", "input_audio": {}})}, PROFILE, "media"),
        ({"messages": said({"type": "file", "file": {}})}, PROFILE, "media"),
        ({"messages": said({"type": "input_image"})}, PROFILE, "media"),
        ({"response_format": {"type": "text"}}, {**PROFILE, "response_formats": []}, None),
        ({"response_format": {"type": "json_object"}}, PROFILE, None),
        ({"response_format": SCHEMA}, PROFILE, "response_format"),
        ({"response_format": SCHEMA}, {"models": ["gpt-4o-mini"]}, None),
        ({"model": "gpt-4o"}, PROFILE, "model"),
        ({"model": "gpt-4o"}, {**PROFILE, "models": []}, None),
        ({"messages": [{"role": "user", "content": "x" * 300}]}, PROFILE, None),
        ({"messages": [{"role": "user", "content": "x" * 301}]}, PROFILE, "too_long"),
        ({"messages": [{"role": "user", "content": "x" * 5000}]}, {}, None),
    ],
)
def test_a_request_is_eligible_unless_one_rule_says_why_not(
    extra: dict[str, Any], profile: dict[str, Any], reason: str | None
) -> None:
    chat, payload = request(**extra)
    assert ineligible_reason(chat, payload, profile) == reason


def test_the_length_rule_allows_the_slack_over_the_longest_trained_prompt() -> None:
    assert PROFILE["max_prompt_chars"] * LENGTH_SLACK == 300


def test_every_eligibility_reason_is_a_declared_routing_reason() -> None:
    cases: list[dict[str, Any]] = [
        {"n": 2},
        {"tools": TOOLS},
        {"messages": said({"type": "image_url"})},
        {"response_format": SCHEMA},
        {"model": "gpt-4o"},
        {"messages": [{"role": "user", "content": "x" * 301}]},
    ]
    reasons = {ineligible_reason(*request(**extra), PROFILE) for extra in cases}
    assert reasons == set(get_args(Ineligible))
    assert {as_ineligible(r) for r in reasons if r is not None} <= REASONS


def test_an_undeclared_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="not a routing reason"):
        as_ineligible("colour")


def test_who_serves_is_what_the_metrics_label() -> None:
    assert get_args(ServedBy) == SERVED_BY


# --- sticky buckets -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "header", "key"),
    [
        ({"user": "ada", "messages": []}, "route-1", "key:route-1"),
        ({"user": "ada", "messages": []}, None, "user:ada"),
        ({"user": "ada", "messages": []}, "", "user:ada"),
        ({"user": "", "messages": [{"role": "user", "content": "x"}]}, None, "messages:"),
        ({"user": 7, "messages": [{"role": "user", "content": "x"}]}, None, "messages:"),
    ],
)
def test_the_route_key_is_the_header_else_the_user_else_the_messages(
    payload: dict[str, Any], header: str | None, key: str
) -> None:
    assert route_key(payload, header).startswith(key)


def test_the_same_messages_give_the_same_key_and_others_another() -> None:
    one = {"messages": [{"role": "user", "content": "a"}]}
    assert route_key(one, None) == route_key(dict(one), None)
    assert route_key(one, None) != route_key({"messages": [{"role": "user", "content": "b"}]}, None)


KEYS = [f"user:{n}" for n in range(10_000)]


@pytest.mark.parametrize("percent", [0.0, 100.0])
def test_cutover_edges_take_nobody_or_everybody(percent: float) -> None:
    assert {in_cutover(TASK, key, percent) for key in KEYS} == {percent == 100.0}


@pytest.mark.parametrize("percent", [1.0, 10.0, 25.0, 50.0, 90.0])
def test_the_cutover_takes_its_share_of_keys(percent: float) -> None:
    share = sum(in_cutover(TASK, key, percent) for key in KEYS) / len(KEYS)
    assert share == pytest.approx(percent / 100, abs=0.015)


def test_buckets_are_sticky_and_in_range() -> None:
    values = [bucket(TASK, key) for key in KEYS]
    assert values == [bucket(TASK, key) for key in KEYS]
    assert all(0 <= value < 100 for value in values)


def test_raising_the_cutover_never_moves_a_key_back_to_the_teacher() -> None:
    for key in KEYS[:2000]:
        stages = [in_cutover(TASK, key, p) for p in (10, 25, 50, 100)]
        assert stages == sorted(stages)


def test_each_task_buckets_its_keys_on_its_own() -> None:
    both = sum(in_cutover("a", key, 50) and in_cutover("b", key, 50) for key in KEYS)
    assert both / len(KEYS) == pytest.approx(0.25, abs=0.02)


# --- gates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("confidence", "threshold", "expected"),
    [
        (-0.5, -0.5, True),
        (-0.4999, -0.5, True),
        (-0.5001, -0.5, False),
        (0.0, 0.0, True),
        (0.0, None, False),
        (-math.inf, -1000.0, False),
    ],
)
def test_confidence_at_or_above_the_threshold_passes(
    confidence: float, threshold: float | None, expected: bool
) -> None:
    assert confident(confidence, threshold) is expected


@pytest.mark.parametrize(
    ("text", "response_format", "problem"),
    [
        ("billing", None, None),
        ("billing", {"type": "text"}, None),
        ("", None, "empty"),
        ("  \n", {"type": "text"}, "empty"),
        ('{"intent": "billing"}', {"type": "json_object"}, None),
        ('```json\n{"intent": "billing"}\n```', {"type": "json_object"}, None),
        ('{"intent": "bill', {"type": "json_object"}, "invalid_json"),
        ("[1, 2]", {"type": "json_object"}, "invalid_json"),
        ("billing", {"type": "json_object"}, "invalid_json"),
        ('{"intent": "billing"}', SCHEMA, None),
        ('{"intent": 3}', SCHEMA, "schema_mismatch"),
        ("{}", SCHEMA, "schema_mismatch"),
        ("not json", SCHEMA, "invalid_json"),
        ('{"a": 1}', {"type": "json_schema", "json_schema": {"name": "x"}}, None),
        ('{"a": 1}', {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}, None),
    ],
)
def test_output_must_satisfy_the_requested_format(
    text: str, response_format: dict[str, Any] | None, problem: str | None
) -> None:
    assert output_problem(text, response_format) == problem
    assert problem is None or problem in get_args(OutputProblem)


# --- the whole decision ---------------------------------------------------------------


def reply(text: str = "billing", confidence: float = -0.1) -> StudentReply:
    completion = {"choices": [{"index": 0, "message": {"content": text}}]}
    return StudentReply(completion, text, confidence, seconds=0.01)


@dataclass
class FakeStudent:
    """Answers every version with ``answer``, or raises ``failure``."""

    answer_with: StudentReply = field(default_factory=reply)
    failure: Exception | None = None
    asked: list[PromptEmbedding | None] = field(default_factory=list)

    async def answer(
        self, student: StudentRef, payload: dict[str, Any], *, prompt: PromptEmbedding | None = None
    ) -> StudentReply:
        self.asked.append(prompt)
        if self.failure is not None:
            raise self.failure
        return self.answer_with


@dataclass
class FakePrompts:
    """The blocking work before a student is asked, noting the thread it ran on."""

    difficult: bool = False
    threads: list[tuple[str, int]] = field(default_factory=list)

    def embed_many(self, batch: Sequence[list[dict[str, Any]]]) -> list[PromptEmbedding]:
        import numpy as np

        self.threads.append(("embed", threading.get_ident()))
        return [PromptEmbedding(np.zeros(4, dtype=np.float32), 0.001) for _ in batch]

    def is_difficult(
        self, version_id: str, messages: list[dict[str, Any]], *, vector: Any = None
    ) -> bool:
        self.threads.append(("difficulty", threading.get_ident()))
        return self.difficult


def policy(
    mode: Mode = "live",
    cutover: float = 100.0,
    *,
    kind: str = "lora",
    threshold: float | None = -1.0,
    shadow: float = 100.0,
    audit: float = 0.0,
    student: bool = True,
) -> Policy:
    ref = StudentRef(uuid.uuid4().hex, 3, kind, f"{TASK}-v3", "label", threshold, PROFILE)
    return Policy(
        task=TASK,
        mode=mode,
        cutover_percent=cutover,
        shadow_percent=shadow,
        audit_percent=audit,
        student=ref if student else None,
    )


async def route(
    chosen: Policy,
    *,
    student: FakeStudent | None = None,
    prompts: FakePrompts | None = None,
    gate: bool = False,
    metrics: Metrics | None = None,
    **extra: Any,
) -> Outcome:
    prompts = prompts or FakePrompts()
    router = Router(
        students=student or FakeStudent(),
        embedder=prompts,
        difficulty=prompts if gate else None,
        metrics=metrics,
    )
    chat, payload = request(**extra)
    return await router.route(chosen, chat, payload, route_key_header="user-1")


@pytest.mark.parametrize(
    ("chosen", "extra", "served_by", "reason", "asked"),
    [
        (policy(student=False), {}, "teacher", "no_student", False),
        (policy("off"), {}, "teacher", "off", False),
        (policy("shadow"), {}, "teacher", "shadow", False),
        (policy("shadow"), {"n": 2}, "teacher", "shadow", False),
        (policy("live", 0), {}, "teacher", "cutover", False),
        (policy("live", 0), {"n": 2}, "teacher", "cutover", False),
        (policy("live"), {}, "student", "student", True),
        (policy("live", kind="classifier"), {}, "student", "student", True),
        (policy("live"), {"n": 2}, "teacher", "n", False),
        (policy("live"), {"tools": TOOLS}, "teacher", "tools", False),
        (policy("live", kind="classifier"), {"model": "gpt-4o"}, "teacher", "model", False),
        (policy("live"), {"response_format": SCHEMA}, "teacher", "response_format", False),
    ],
)
async def test_mode_cutover_and_eligibility_decide_who_answers(
    chosen: Policy, extra: dict[str, Any], served_by: str, reason: str, asked: bool
) -> None:
    student = FakeStudent()
    outcome = await route(chosen, student=student, **extra)
    assert (outcome.served_by, outcome.reason) == (served_by, reason)
    assert bool(student.asked) is asked
    assert (outcome.reply is not None) is (served_by == "student")
    assert outcome.student_version == ("v3" if served_by == "student" else None)


@pytest.mark.parametrize(
    ("student", "threshold", "extra", "reason"),
    [
        (FakeStudent(reply(confidence=-0.5)), -1.0, {}, "student"),
        (FakeStudent(reply(confidence=-1.0)), -1.0, {}, "student"),
        (FakeStudent(reply(confidence=-2.0)), -1.0, {}, "low_confidence"),
        (FakeStudent(reply(confidence=0.0)), None, {}, "low_confidence"),
        (FakeStudent(failure=StudentUnavailable("HTTP 500")), -1.0, {}, "student_error"),
        (FakeStudent(failure=StudentDeclined("unfamiliar", "far")), -1.0, {}, "unfamiliar"),
        (FakeStudent(reply(text=" ")), -1.0, {}, "empty"),
        (
            FakeStudent(reply(text='{"intent": "bill')),
            -1.0,
            {"response_format": {"type": "json_object"}},
            "invalid_json",
        ),
    ],
)
async def test_an_answer_that_fails_a_gate_falls_back_to_the_teacher(
    student: FakeStudent, threshold: float | None, extra: dict[str, Any], reason: str
) -> None:
    outcome = await route(policy(threshold=threshold, audit=100), student=student, **extra)
    assert outcome.reason == reason
    assert outcome.served_by == ("student" if reason == "student" else "fallback")
    assert (outcome.audit is not None) is (reason == "student"), "only served answers"
    assert outcome.shadow is None


@pytest.mark.parametrize("kind", ["lora", "classifier"])
async def test_a_difficult_input_goes_to_the_teacher_without_asking_the_student(
    kind: str,
) -> None:
    student, prompts = FakeStudent(), FakePrompts(difficult=True)
    outcome = await route(policy(kind=kind), student=student, prompts=prompts, gate=True)
    assert (outcome.served_by, outcome.reason) == ("teacher", "difficult")
    assert student.asked == []
    assert outcome.shadow is None


@pytest.mark.parametrize(
    ("kind", "gate", "work"),
    [
        ("lora", False, []),
        ("lora", True, ["difficulty"]),
        ("classifier", False, ["embed"]),
        ("classifier", True, ["embed", "difficulty"]),
    ],
)
async def test_the_blocking_work_before_the_student_is_one_worker_thread_hop(
    kind: str, gate: bool, work: list[str]
) -> None:
    student, prompts = FakeStudent(), FakePrompts()
    await route(policy(kind=kind), student=student, prompts=prompts, gate=gate)
    assert [name for name, _ in prompts.threads] == work
    threads = {thread for _, thread in prompts.threads}
    assert len(threads) == (1 if work else 0), "one hop for all of it"
    assert threading.get_ident() not in threads, "never on the event loop"
    [prompt] = student.asked
    assert (prompt is not None) is (kind == "classifier"), "a classifier reuses the embedding"


@pytest.mark.parametrize(
    ("chosen", "extra", "shadowed"),
    [
        (policy("shadow", shadow=100), {}, True),
        (policy("shadow", shadow=0), {}, False),
        (policy("shadow", shadow=100, student=False), {}, False),
        (policy("live", 0, shadow=100), {}, True),
        (policy("live", 0, shadow=0), {}, False),
        (policy("live", 100, shadow=100), {"n": 2}, False),
        (policy("live", 100, shadow=100), {}, False),
        (policy("off", shadow=100), {}, False),
    ],
)
async def test_the_teachers_answer_is_shadowed_in_shadow_mode_and_outside_the_cutover(
    chosen: Policy, extra: dict[str, Any], shadowed: bool
) -> None:
    outcome = await route(chosen, **extra)
    assert (outcome.shadow is not None) is shadowed
    if outcome.shadow is not None:
        assert outcome.served_by == "teacher"
        job = outcome.shadow.job(teacher_text="billing", exchange_id="e1")
        assert (job.kind, job.teacher_text, job.exchange_id) == ("shadow", "billing", "e1")


@pytest.mark.parametrize(("audit", "audited"), [(100.0, True), (0.0, False)])
async def test_a_sampled_share_of_served_answers_is_audited(audit: float, audited: bool) -> None:
    answer = reply("refund")
    outcome = await route(policy(audit=audit), student=FakeStudent(answer))
    assert outcome.served_by == "student"
    assert (outcome.audit is not None) is audited
    if outcome.audit is not None:

        async def ask(payload: dict[str, Any]) -> None:
            return None

        job = outcome.audit.job(ask)
        assert (job.kind, job.student_reply, job.ask_teacher) == ("audit", answer, ask)


def counted(metrics: Metrics, reason: str) -> float | None:
    value: float | None = metrics.registry.get_sample_value(
        "stillroom_routing_decisions_total", {"task": TASK, "reason": reason}
    )
    return value


@pytest.mark.parametrize(
    ("chosen", "student", "reason"),
    [
        (policy("shadow"), FakeStudent(), "shadow"),
        (policy("live", 0), FakeStudent(), "cutover"),
        (policy("live"), FakeStudent(), "student"),
        (policy("live"), FakeStudent(reply(confidence=-5)), "low_confidence"),
        (policy("live"), FakeStudent(failure=StudentUnavailable("x")), "student_error"),
    ],
)
async def test_each_outcome_is_counted_once_by_its_reason(
    chosen: Policy, student: FakeStudent, reason: str
) -> None:
    metrics = Metrics(CollectorRegistry())
    await route(chosen, student=student, metrics=metrics)
    assert counted(metrics, reason) == 1
    total = sum(counted(metrics, r) or 0 for r in REASONS)
    assert total == 1
    served = metrics.registry.get_sample_value("stillroom_student_seconds_count")
    assert served == (1 if reason == "student" else 0)


async def test_a_task_without_a_student_is_not_counted() -> None:
    metrics = Metrics(CollectorRegistry())
    await route(policy(student=False), metrics=metrics)
    assert all(counted(metrics, r) is None for r in REASONS)


async def test_the_same_user_gets_the_same_outcome_every_time() -> None:
    chosen = policy("live", 50)
    chat, payload = request(user="ada")
    router = Router(students=FakeStudent(), embedder=FakePrompts())
    outcomes = {(await router.route(chosen, chat, payload)).served_by for _ in range(20)}
    assert len(outcomes) == 1
