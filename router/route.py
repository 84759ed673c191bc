"""The routing decision for one request, whole and in one place.

:meth:`Router.route` decides everything about a request of a task: its mode, the sticky
cutover bucket, eligibility, the difficulty gate, asking the student and holding its answer
to the confidence and output gates, and what to score later (a sampled share of shadowed
requests and of audited student answers). It returns one :class:`Outcome`; the proxy
executes it (serves the student's reply, or calls the teacher) and records it.

Its only I/O is the student call and, in one worker-thread hop, the prompt's embedding and
the difficulty check. :func:`decide`, the first step, is pure and fast.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from core.metrics import Metrics
from core.wire import ChatCompletionRequest
from router.batching import MicroBatcher
from router.bucketing import in_cutover, route_key
from router.eligibility import ineligible_reason
from router.gates import confident, output_problem
from router.policy import Policy, StudentRef
from router.reasons import (
    NotAsked,
    RoutingReason,
    ServedBy,
    as_ineligible,
    as_output_problem,
)
from router.scoring import AuditScoring, ShadowScoring
from router.student import (
    PromptEmbedding,
    Student,
    StudentDeclined,
    StudentReply,
    StudentUnavailable,
)

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("stillroom.router")

Sampler = Callable[[float], bool]
Asked = tuple[StudentRef, list[dict[str, Any]]]  # a version and the request's messages
Prepared = tuple[PromptEmbedding | None, bool]  # the prompt's embedding, and is it difficult


def sampled(percent: float) -> bool:
    """True for a random ``percent`` share of calls."""
    return percent > 0 and random.random() * 100 < percent


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request is answered: by whom, why, and what is scored later.

    ``shadow`` comes only with a teacher-served outcome (score it once the teacher's answer
    is complete), ``audit`` only with a student-served one.
    """

    task: str
    served_by: ServedBy
    reason: RoutingReason  # "student", or why the teacher answers
    reply: StudentReply | None = None  # the answer to serve, when the student serves
    student_version: str | None = None  # "v3", when the student serves
    student_version_id: str | None = None  # its id
    shadow: ShadowScoring | None = None
    audit: AuditScoring | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The first, pure step: whether the student is asked, or why the teacher answers."""

    policy: Policy
    reason: Literal["student"] | NotAsked

    @property
    def to_student(self) -> bool:
        return self.reason == "student"

    @property
    def student(self) -> StudentRef:
        assert self.policy.student is not None
        return self.policy.student


def decide(
    policy: Policy, request: ChatCompletionRequest, payload: dict[str, Any], key: str
) -> Decision:
    """Mode, sticky cutover bucket (``key``: see ``router.bucketing.route_key``) and
    eligibility; no I/O."""
    if policy.student is None:
        return Decision(policy, "no_student")
    if policy.mode != "live":
        return Decision(policy, policy.mode)
    if not in_cutover(policy.task, key, policy.cutover_percent):
        return Decision(policy, "cutover")
    reason = ineligible_reason(request, payload, policy.student.profile)
    if reason is not None:
        return Decision(policy, as_ineligible(reason))
    return Decision(policy, "student")


class PromptEmbedder(Protocol):
    def embed_many(self, batch: Sequence[list[dict[str, Any]]]) -> list[PromptEmbedding]:
        """The prompt key of each request's ``messages``, embedded in one call. Blocking."""


class DifficultyCheck(Protocol):
    def is_difficult(
        self,
        version_id: str,
        messages: list[dict[str, Any]],
        *,
        vector: np.ndarray[Any, np.dtype[np.float32]] | None = None,
    ) -> bool:
        """Whether inputs like this one mostly got wrong answers from the version. Blocking."""


@dataclass(frozen=True, slots=True)
class Router:
    """Routes requests to the student or the teacher. ``embedder`` embeds prompts for
    classifier students (and the difficulty gate reuses the embedding); ``sample`` draws
    the shadow and audit shares (injectable for tests)."""

    students: Student
    embedder: PromptEmbedder
    difficulty: DifficultyCheck | None = None
    metrics: Metrics | None = None
    sample: Sampler = sampled
    # Concurrent requests' embeddings and difficulty checks, in one worker-thread hop.
    batch_window_seconds: float = 0.0
    batch_max: int = 16
    _prepare: MicroBatcher[Asked, Prepared] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        batcher = MicroBatcher(
            self._before_students,
            window_seconds=self.batch_window_seconds,
            max_items=self.batch_max,
        )
        object.__setattr__(self, "_prepare", batcher)

    async def route(
        self,
        policy: Policy,
        request: ChatCompletionRequest,
        payload: dict[str, Any],
        *,
        route_key_header: str | None = None,
    ) -> Outcome:
        """The outcome for ``request`` (``payload``: its JSON) under its task's policy."""
        key = route_key(payload, route_key_header)
        outcome = await self._route(decide(policy, request, payload, key), request, payload)
        if self.metrics is not None:
            count(self.metrics, outcome)
        return outcome

    async def _route(
        self, decision: Decision, request: ChatCompletionRequest, payload: dict[str, Any]
    ) -> Outcome:
        policy = decision.policy
        if not decision.to_student:
            return self._teacher(decision, payload)
        student = decision.student
        prompt, difficult = None, False
        if student.kind == "classifier" or self.difficulty is not None:
            try:
                prompt, difficult = await self._prepare.submit((student, payload["messages"]))
            except Exception:  # the embedding model failed: the teacher answers
                log.exception("could not prepare the student's input")
                return Outcome(policy.task, "fallback", "student_error")
        if difficult:
            return Outcome(policy.task, "teacher", "difficult")
        return await self._ask(policy, student, request, payload, prompt)

    def _teacher(self, decision: Decision, payload: dict[str, Any]) -> Outcome:
        policy = decision.policy
        shadow = None
        # A live task's teacher-served share outside the cutover is shadowed too: the
        # evidence that earns the next auto-ramp stage, and that drift checks read.
        if decision.reason in ("shadow", "cutover") and self.sample(policy.shadow_percent):
            shadow = ShadowScoring(policy, payload)
        return Outcome(policy.task, "teacher", decision.reason, shadow=shadow)

    def _before_students(self, batch: Sequence[Asked]) -> list[Prepared]:
        """Blocking, in one worker thread for a batch of requests: their prompts' embeddings
        (a classifier answers from it, and the difficulty gate reuses it), in one call of
        the encoder, and whether each input is too difficult."""
        prompts: list[PromptEmbedding | None] = [None] * len(batch)
        wanted = [i for i, (student, _) in enumerate(batch) if student.kind == "classifier"]
        if wanted:
            embedded = self.embedder.embed_many([batch[i][1] for i in wanted])
            for i, vector in zip(wanted, embedded, strict=True):
                prompts[i] = vector
        prepared: list[Prepared] = []
        for (student, messages), prompt in zip(batch, prompts, strict=True):
            difficult = self.difficulty is not None and self.difficulty.is_difficult(
                student.version_id, messages, vector=prompt.vector if prompt is not None else None
            )
            prepared.append((prompt, difficult))
        return prepared

    async def _ask(
        self,
        policy: Policy,
        student: StudentRef,
        request: ChatCompletionRequest,
        payload: dict[str, Any],
        prompt: PromptEmbedding | None,
    ) -> Outcome:
        """The student's answer under the confidence and output gates; any doubt or
        failure falls back to the teacher."""
        try:
            reply = await self.students.answer(student, payload, prompt=prompt)
        except StudentDeclined as declined:
            return Outcome(policy.task, "fallback", declined.reason)
        except StudentUnavailable:
            return Outcome(policy.task, "fallback", "student_error")
        if not confident(reply.confidence, student.confidence_threshold):
            return Outcome(policy.task, "fallback", "low_confidence")
        problem = output_problem(reply.text, request.response_format)
        if problem is not None:
            return Outcome(policy.task, "fallback", as_output_problem(problem))
        audit = AuditScoring(policy, payload, reply) if self.sample(policy.audit_percent) else None
        return Outcome(
            policy.task,
            "student",
            "student",
            reply=reply,
            student_version=f"v{student.number}",
            student_version_id=student.version_id,
            audit=audit,
        )


def count(metrics: Metrics, outcome: Outcome) -> None:
    """The routing metrics of one outcome. Only tasks with a student are counted."""
    if outcome.reason == "no_student":
        return
    metrics.routing.labels(task=outcome.task, reason=outcome.reason).inc()
    if outcome.reply is not None:
        metrics.student_seconds.observe(outcome.reply.seconds)
