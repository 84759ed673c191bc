"""Who answers a request, and why: each routing reason declared once.

These are the values of ``X-Stillroom-Served-By`` and of the ``reason`` label of
``stillroom_routing_decisions_total``. The eligibility rules, the output gate and the
students name their reasons as plain strings; :func:`as_ineligible` and
:func:`as_output_problem` check each against this list, so a reason added in one place and
not here fails the router's tests, not a dashboard.
"""

from __future__ import annotations

from typing import Any, Literal, cast, get_args

# cache: the teacher's earlier answer to the identical request, from the store.
ServedBy = Literal["teacher", "student", "fallback", "cache"]

# The teacher answers without the student being asked.
Ineligible = Literal["n", "tools", "media", "response_format", "model", "too_long"]
# What only the teacher can do, on the Responses and Messages APIs (the reasons of
# ``core.dialects.responses.teacher_only`` and ``core.dialects.messages.teacher_only``),
# and teacher_state: a ``previous_response_id`` naming a response the teacher holds.
TeacherOnly = Literal[
    "builtin_tool",
    "background",
    "reasoning_items",
    "server_items",
    "conversation",
    "prompt_template",
    "server_include",
    "server_tool",
    "thinking",
    "mcp_servers",
    "container",
    "media_input",
    "teacher_state",
]
NotAsked = Literal["no_student", "off", "shadow", "cutover", "difficult", Ineligible, TeacherOnly]

# The student was asked; its answer was not good enough to serve (the teacher falls back).
# Declined: it would not answer (an unfamiliar input), or could not (no replica of the
# student server holds its adapter: not_loaded).
Declined = Literal["unfamiliar", "not_loaded"]
OutputProblem = Literal["empty", "invalid_json", "schema_mismatch"]
Escalation = Literal["student_error", "low_confidence", Declined, OutputProblem]

RoutingReason = Literal["student", NotAsked, Escalation]

REASONS: frozenset[str] = frozenset(get_args(RoutingReason))


def as_ineligible(value: str) -> Ineligible:
    """An eligibility rule's reason (``router.eligibility``), checked."""
    return cast(Ineligible, _declared(value, Ineligible))


def as_teacher_only(value: str) -> TeacherOnly:
    """A dialect's reason that only the teacher can answer a request, checked."""
    return cast(TeacherOnly, _declared(value, TeacherOnly))


def as_output_problem(value: str) -> OutputProblem:
    """The output gate's reason (``router.gates.output_problem``), checked."""
    return cast(OutputProblem, _declared(value, OutputProblem))


def _declared(value: str, kind: Any) -> str:
    if value not in get_args(kind):
        raise ValueError(f"{value!r} is not a routing reason declared in router.reasons")
    return value
