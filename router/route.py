"""The routing decision for one request, and asking the student under the gates.

``decide`` is pure and fast (no I/O): mode, sticky cutover bucket, eligibility.
``ask_student`` calls the student and applies the confidence and output gates; any doubt or
failure comes back as an escalation reason, and the proxy lets the teacher answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.wire import ChatCompletionRequest
from router.bucketing import in_cutover
from router.eligibility import ineligible_reason
from router.gates import confident, output_problem
from router.policy import Policy, StudentRef
from router.student import (
    PromptEmbedding,
    Student,
    StudentDeclined,
    StudentReply,
    StudentUnavailable,
)


@dataclass(frozen=True, slots=True)
class Decision:
    """Who should answer first, and why."""

    policy: Policy
    to_student: bool
    reason: str  # why the teacher answers ("off", "no_student", "cutover", "n", ...) or "student"

    @property
    def student(self) -> StudentRef:
        assert self.policy.student is not None
        return self.policy.student


@dataclass(frozen=True, slots=True)
class StudentOutcome:
    reply: StudentReply | None  # None: escalate to the teacher
    reason: str  # "served", or why it escalated: error, low_confidence, unfamiliar, ...


def decide(
    policy: Policy, request: ChatCompletionRequest, payload: dict[str, Any], key: str
) -> Decision:
    if policy.student is None:
        return Decision(policy, False, "no_student")
    if policy.mode != "live":
        return Decision(policy, False, policy.mode)
    if not in_cutover(policy.task, key, policy.cutover_percent):
        return Decision(policy, False, "cutover")
    reason = ineligible_reason(request, payload, policy.student.profile)
    if reason is not None:
        return Decision(policy, False, reason)
    return Decision(policy, True, "student")


async def ask_student(
    students: Student,
    decision: Decision,
    request: ChatCompletionRequest,
    payload: dict[str, Any],
    *,
    prompt: PromptEmbedding | None = None,
) -> StudentOutcome:
    student = decision.student
    try:
        reply = await students.answer(student, payload, prompt=prompt)
    except StudentDeclined as declined:
        return StudentOutcome(None, declined.reason)
    except StudentUnavailable:
        return StudentOutcome(None, "student_error")
    if not confident(reply.confidence, student.confidence_threshold):
        return StudentOutcome(None, "low_confidence")
    problem = output_problem(reply.text, request.response_format)
    if problem is not None:
        return StudentOutcome(None, problem)
    return StudentOutcome(reply, "served")
