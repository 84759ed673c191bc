"""Curation: from a task's exchanges to training and held-out examples.

Only complete, successful teacher answers are kept; duplicates go; personal data can be
scrubbed; a fixed ~10% held-out split (by hash of the prompt, so it is stable as data
grows) is never trained on; label-like tasks get a cap per label. Every exchange left out
is counted under the reason it was left out.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.agreement import Shape, ShapeRules, detect_shape, normalise_label, parse_json_object
from core.answer_layout import call_document
from core.pii import scrub
from core.profile import in_heldout, prompt_key
from core.tables import Exchange
from distiller.fields import FieldReading, FieldRules, read_fields

GOOD_FINISH = frozenset({"stop", "tool_calls"})


@dataclass(frozen=True, slots=True)
class Example:
    """One curated pair: the prompt as the client sent it, and the teacher's answer."""

    exchange_id: str
    messages: list[dict[str, Any]]
    answer: str
    prompt_key: str  # normalised prompt text, for duplicates and the split
    # The request's response_format: the student serves under it, so it is evaluated so.
    response_format: dict[str, Any] | None = None

    @property
    def prompt_text(self) -> str:
        return self.prompt_key


@dataclass(frozen=True, slots=True)
class CurationConfig:
    heldout_percent: int = 10
    near_duplicate_threshold: float | None = 0.97
    scrub_pii: bool = False
    label_cap: int = 300
    shape_rules: ShapeRules = field(default_factory=ShapeRules)
    field_rules: FieldRules = field(default_factory=FieldRules)


@dataclass
class CuratedSet:
    shape: Shape
    train: list[Example]
    heldout: list[Example]
    excluded: Counter[str]
    labels: list[str] = field(default_factory=list)  # label-like tasks: the answer set
    fields: FieldReading | None = None  # json tasks: each field's kind, the teacher's layout

    @property
    def extractor_shaped(self) -> bool:
        return self.fields is not None and self.fields.extractor_shaped

    def summary(self) -> dict[str, Any]:
        summary = {
            "shape": self.shape,
            "train": len(self.train),
            "heldout": len(self.heldout),
            "excluded": dict(self.excluded),
            "labels": len(self.labels),
        }
        if self.fields is not None:
            summary["fields"] = self.fields.document()
        return summary


def answer_of(exchange: Exchange) -> tuple[str | None, str]:
    """The teacher's answer text, or None and the reason it is not a training answer.

    An app's correction (``corrected_response``, by feedback) is the answer in place of
    whatever served it. An answer rated bad is none, and so is one made suspect by its
    client asking again (``suspect``), unless the app rated it good."""
    if exchange.corrected_response is not None and exchange.status == "ok":
        return completion_answer(exchange.corrected_response, exchange.request)
    if exchange.served_by == "student":
        return None, "student_answer"
    if exchange.served_by == "cache":  # a teacher answer already stored: not a new pair
        return None, "cache_answer"
    if exchange.status != "ok":
        return None, exchange.status  # error or aborted
    answer, reason = completion_answer(exchange.response or {}, exchange.request)
    if answer is not None and exchange.feedback == "bad":
        return None, "feedback_bad"
    if answer is not None and exchange.suspect is not None and exchange.feedback != "good":
        return None, f"suspect_{exchange.suspect}"
    return answer, reason


def completion_answer(
    completion: dict[str, Any], request: dict[str, Any]
) -> tuple[str | None, str]:
    """The answer text of a chat.completion to ``request``, or None and the reason it is
    not a training answer."""
    choices = completion.get("choices") or []
    if not choices:
        return None, "no_answer"
    choice = choices[0]
    if choice.get("finish_reason") not in GOOD_FINISH:
        return None, f"finish_{choice.get('finish_reason')}"
    message = choice.get("message") or {}
    if message.get("tool_calls"):
        calls = [
            {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
            for c in message["tool_calls"]
        ]
        return json.dumps(calls), "ok"
    content = message.get("content")
    if not content or not str(content).strip():
        return None, "no_answer"
    fmt = (request.get("response_format") or {}).get("type")
    if fmt in ("json_object", "json_schema") and parse_json_object(content) is None:
        return None, "invalid_json"
    return str(content), "ok"


def _scrubbed(example: Example) -> Example:
    messages = [
        {**m, "content": scrub(m["content"])} if isinstance(m.get("content"), str) else m
        for m in example.messages
    ]
    return Example(
        exchange_id=example.exchange_id,
        messages=messages,
        answer=scrub(example.answer),
        prompt_key=example.prompt_key,
        response_format=example.response_format,
    )


Embed = Callable[[Sequence[str]], "np.ndarray[Any, Any]"]


def curate(
    exchanges: Sequence[Exchange], config: CurationConfig, *, embed: Embed | None = None
) -> CuratedSet:
    """Curate a task's exchanges (oldest first). ``embed`` (unit vectors) enables
    near-duplicate removal."""
    excluded: Counter[str] = Counter()
    seen: set[str] = set()
    examples: list[Example] = []
    json_requested = False
    # Corrected exchanges first: of a prompt asked more than once, the corrected answer
    # is the one kept (the sort is stable: oldest first otherwise).
    for exchange in sorted(exchanges, key=lambda e: e.corrected_response is None):
        answer, reason = answer_of(exchange)
        if answer is None:
            excluded[reason] += 1
            continue
        messages = list(exchange.request.get("messages") or [])
        key = prompt_key(messages)
        if key in seen:
            excluded["duplicate"] += 1
            continue
        seen.add(key)
        response_format = exchange.request.get("response_format") or None
        fmt = (response_format or {}).get("type")
        json_requested = json_requested or fmt in ("json_object", "json_schema")
        examples.append(Example(exchange.id, messages, answer, key, response_format))
    if embed is not None and config.near_duplicate_threshold is not None:
        examples = _without_near_duplicates(examples, embed, config, excluded)
    shape = detect_shape(
        [e.answer for e in examples], json_requested=json_requested, rules=config.shape_rules
    )
    if examples and all(call_document(e.answer) is not None for e in examples):
        shape = "json"  # calls of a function: their arguments are the answer
    reading = None
    if shape == "json":
        reading = read_fields([(e.messages, e.answer) for e in examples], config.field_rules)
    if config.scrub_pii:
        examples = [_scrubbed(e) for e in examples]
    train = [e for e in examples if not in_heldout(e.prompt_key, config.heldout_percent)]
    heldout = [e for e in examples if in_heldout(e.prompt_key, config.heldout_percent)]
    labels: list[str] = []
    if shape == "label":
        train = _capped(train, config.label_cap, excluded)
        labels = sorted({e.answer.strip() for e in examples})
    return CuratedSet(shape, train, heldout, excluded, labels, reading)


def _without_near_duplicates(
    examples: list[Example], embed: Embed, config: CurationConfig, excluded: Counter[str]
) -> list[Example]:
    """Keep the first of each group of prompts closer than the threshold."""
    if len(examples) < 2:
        return examples
    import faiss

    vectors = np.ascontiguousarray(embed([e.prompt_key for e in examples]), dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    kept: list[Example] = []
    threshold = config.near_duplicate_threshold or 1.0
    for example, vector in zip(examples, vectors, strict=True):
        row = vector.reshape(1, -1)
        if index.ntotal:
            scores, _ = index.search(row, 1)
            if scores[0][0] >= threshold:
                excluded["near_duplicate"] += 1
                continue
        index.add(row)
        kept.append(example)
    return kept


def _capped(train: list[Example], cap: int, excluded: Counter[str]) -> list[Example]:
    """At most ``cap`` training examples per label, so frequent labels do not drown
    rare ones."""
    counts: Counter[str] = Counter()
    kept = []
    for example in train:
        label = normalise_label(example.answer)
        if counts[label] >= cap:
            excluded["label_cap"] += 1
            continue
        counts[label] += 1
        kept.append(example)
    return kept
