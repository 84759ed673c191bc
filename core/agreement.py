"""How a task's answers look (its shape) and how agreement with the teacher is scored.

Shared by the distiller (held-out evaluation) and the router (shadow and audit scoring), so
that "agreement" means the same everywhere:

- ``label``: short answers from a small closed set: normalised exact match;
- ``json``: answers that parse as JSON objects: exact match, and field-level F1;
- ``text``: anything else: cosine similarity of sentence embeddings above a threshold.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Shape = Literal["label", "json", "text"]

_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ShapeRules:
    """When a task counts as label-like: at most ``max_labels`` distinct answers (after
    normalisation), none longer than ``max_chars``, and answers seen ``min_count`` times or
    more make up ``min_share_covered`` of all (a rare stray answer does not reopen the set)."""

    max_labels: int = 50
    min_count: int = 3
    max_chars: int = 48
    min_share_covered: float = 0.98


def normalise_label(answer: str) -> str:
    """Case, surrounding whitespace and quotes, inner runs of space, and a trailing full
    stop do not change a label."""
    text = _SPACE.sub(" ", answer.strip().strip("\"'`").strip()).lower()
    return text.removesuffix(".").strip()


def parse_json_object(answer: str) -> dict[str, Any] | None:
    text = answer.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def detect_shape(
    answers: Sequence[str], *, json_requested: bool = False, rules: ShapeRules | None = None
) -> Shape:
    """The shape of a task from its teacher answers."""
    rules = rules or ShapeRules()
    if not answers:
        return "text"
    if json_requested or all(parse_json_object(a) is not None for a in answers):
        return "json"
    labels = Counter(normalise_label(a) for a in answers)
    if len(labels) > rules.max_labels:
        return "text"
    if any(len(label) > rules.max_chars for label in labels):
        return "text"
    frequent = sum(n for n in labels.values() if n >= rules.min_count)
    if frequent / len(answers) < rules.min_share_covered:
        return "text"
    return "label"


def json_field_f1(student: dict[str, Any], teacher: dict[str, Any]) -> float:
    """F1 over top-level (field, value) pairs."""
    if not student and not teacher:
        return 1.0
    student_pairs = {(k, json.dumps(v, sort_keys=True)) for k, v in student.items()}
    teacher_pairs = {(k, json.dumps(v, sort_keys=True)) for k, v in teacher.items()}
    matched = len(student_pairs & teacher_pairs)
    if matched == 0:
        return 0.0
    precision = matched / len(student_pairs)
    recall = matched / len(teacher_pairs)
    return 2 * precision * recall / (precision + recall)


Similarity = Callable[[str, str], float]


@dataclass(frozen=True, slots=True)
class Score:
    agrees: bool
    value: float  # 1/0 for labels and exact JSON; F1 or cosine otherwise


def score(
    shape: Shape,
    student: str,
    teacher: str,
    *,
    similarity: Similarity | None = None,
    text_threshold: float = 0.85,
) -> Score:
    """Does the student's answer agree with the teacher's under the task's metric?"""
    if shape == "label":
        same = normalise_label(student) == normalise_label(teacher)
        return Score(same, 1.0 if same else 0.0)
    if shape == "json":
        mine, theirs = parse_json_object(student), parse_json_object(teacher)
        if mine is None or theirs is None:
            return Score(False, 0.0)
        return Score(mine == theirs, json_field_f1(mine, theirs))
    if student.strip() == teacher.strip():
        return Score(True, 1.0)
    if similarity is None:
        return Score(False, 0.0)
    value = similarity(student, teacher)
    return Score(value >= text_threshold, value)
