"""Reading a JSON task's fields: is it extractor-shaped, and how does its teacher write?

For each leaf path of the teacher's JSON answers (the message content, or the arguments of
a call of one function), its kind:

- ``span``: a string copied verbatim from the request's varying turns, nearly always;
- ``label``: drawn from a few distinct values (absence counts as one);
- ``constant``: always the same;
- ``unsupported``: anything else (free text, arrays, values the input does not contain),
  with the reason.

A task is extractor-shaped when every field is supported and at least one varies. The
reading is kept on the task (``tasks.field_kinds``), and the teacher's layout (key order,
absent fields, serialisation) goes with an extractor so that its answers read the same.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from core.answer_layout import (
    AbsentStyle,
    Layout,
    Node,
    Path,
    Serialisation,
    answer_document,
)
from core.extractor import source_text

FieldKindName = Literal["span", "label", "constant", "unsupported"]


@dataclass(frozen=True, slots=True)
class FieldRules:
    span_min_share: float = field(
        default=0.95,
        metadata={"help": "share of a field's values found verbatim in the input for a span"},
    )
    max_labels: int = field(default=50, metadata={"help": "distinct values a label may have"})
    label_min_count: int = field(
        default=3, metadata={"help": "values seen this often cover a label's answers..."}
    )
    label_min_covered: float = field(default=0.98, metadata={"help": "...this share of them"})


@dataclass(frozen=True, slots=True)
class FieldKind:
    path: Path
    kind: FieldKindName
    present: float  # share of answers that give it a value
    values: tuple[str, ...] = ()  # label: the JSON of each value; constant: its JSON
    reason: str | None = None

    @property
    def name(self) -> str:
        return ".".join(self.path)

    def document(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"kind": self.kind, "present": round(self.present, 4)}
        if self.kind == "label":
            shown["values"] = len(self.values)
        if self.reason:
            shown["reason"] = self.reason
        return shown


@dataclass(slots=True)
class FieldReading:
    """A JSON task's fields, whether an extractor can serve it, and its teacher's layout."""

    fields: list[FieldKind]
    layout: Layout | None
    reason: str | None = None  # why the task is not extractor-shaped

    @property
    def extractor_shaped(self) -> bool:
        return self.reason is None

    def document(self) -> dict[str, Any]:
        """What ``tasks.field_kinds`` keeps."""
        return {
            "extractor": self.extractor_shaped,
            "reason": self.reason,
            "function": self.layout.function if self.layout is not None else None,
            "fields": {f.name: f.document() for f in self.fields},
        }


@dataclass(frozen=True, slots=True)
class _Answer:
    document: dict[str, Any]
    text: str
    source: str


def read_fields(
    pairs: Sequence[tuple[list[dict[str, Any]], str]], rules: FieldRules | None = None
) -> FieldReading:
    """The field kinds of ``pairs`` (the request's messages, the curated answer)."""
    rules = rules or FieldRules()
    answers: list[_Answer] = []
    functions: Counter[str | None] = Counter()
    for messages, written in pairs:
        parsed = answer_document(written)
        if parsed is None:
            return FieldReading([], None, "an answer is not a JSON object or a single call")
        document, text, function = parsed
        functions[function] += 1
        answers.append(_Answer(document, text, source_text(messages)))
    if not answers:
        return FieldReading([], None, "no answers")
    if len(functions) > 1:
        return FieldReading([], None, "the teacher calls more than one function, or mixes calls")
    root = Node()
    for each in answers:
        _merge_keys(root, each.document)
    kinds = [_kind(path, answers, rules) for path in _leaf_paths(root)]
    layout = Layout(root, _serialisation(answers), next(iter(functions)))
    _absent_styles(root, answers)
    _input_order(root, (), answers, {f.path for f in kinds if f.kind == "span"})
    unsupported = [f for f in kinds if f.kind == "unsupported"]
    reason = None
    if unsupported:
        reason = "; ".join(f"{f.name}: {f.reason}" for f in unsupported)
    elif all(f.kind == "constant" for f in kinds):
        reason = "every field is constant"
    return FieldReading(kinds, layout, reason)


def _merge_keys(node: Node, document: dict[str, Any]) -> None:
    """Learn each object's keys in the teacher's order: a key seen for the first time goes
    after the key written before it."""
    previous: str | None = None
    for key, value in document.items():
        if key not in node.nodes:
            node.nodes[key] = Node()
            at = node.children.index(previous) + 1 if previous is not None else 0
            node.children.insert(at, key)
        if isinstance(value, dict) and value:
            _merge_keys(node.nodes[key], value)
        previous = key


def _leaf_paths(node: Node, path: Path = ()) -> list[Path]:
    if not node.children:
        return [path]
    found: list[Path] = []
    for key in node.children:
        found += _leaf_paths(node.nodes[key], (*path, key))
    return found


def value_at(document: Any, path: Path) -> Any:
    """The value at ``path``; None when it is not there."""
    for key in path:
        if not isinstance(document, dict) or key not in document:
            return None
        document = document[key]
    return document


def _kind(path: Path, answers: list[_Answer], rules: FieldRules) -> FieldKind:
    values = [value_at(a.document, path) for a in answers]
    given = [(v, a) for v, a in zip(values, answers, strict=True) if v not in (None, "", {})]
    present = len(given) / len(answers)
    encoded = Counter(json.dumps(v, sort_keys=True) for v, _ in given)
    if any(isinstance(v, list | dict) for v, _ in given):
        if len(encoded) == 1 and present == 1.0:
            return FieldKind(path, "constant", present, tuple(encoded))
        return FieldKind(
            path,
            "unsupported",
            present,
            reason="arrays and objects of varying content are not extracted",
        )
    if not given or (len(encoded) == 1 and present == 1.0):
        return FieldKind(path, "constant", present, tuple(encoded))
    strings = all(isinstance(v, str) for v, _ in given)
    found = sum(isinstance(v, str) and v in a.source for v, a in given) / len(given)
    if strings and found >= rules.span_min_share:
        return FieldKind(path, "span", present)
    frequent = sum(n for n in encoded.values() if n >= rules.label_min_count)
    if len(encoded) <= rules.max_labels and frequent / len(given) >= rules.label_min_covered:
        return FieldKind(path, "label", present, tuple(sorted(encoded)))
    if strings:
        mean_chars = sum(len(v) for v, _ in given) / len(given)
        what = "free text" if mean_chars > 40 else "values the input does not contain"
        reason = (
            f"{what}: {len(encoded)} distinct values (a label has at most {rules.max_labels}, "
            f"each seen {rules.label_min_count} times), {found:.0%} found verbatim in the "
            f"input (a span needs {rules.span_min_share:.0%})"
        )
    else:
        reason = f"{len(encoded)} distinct values, too many for a label and not in the input"
    return FieldKind(path, "unsupported", present, reason=reason)


def _serialisation(answers: list[_Answer]) -> Serialisation:
    """The ``json.dumps`` options that reproduce most answers byte for byte."""
    counts: Counter[Serialisation] = Counter()
    for answer in answers[:200]:
        for candidate in Serialisation.candidates():
            if candidate.dumps(answer.document) == answer.text:
                counts[candidate] += 1
                break
    return counts.most_common(1)[0][0] if counts else Serialisation()


def _absent_styles(root: Node, answers: list[_Answer]) -> None:
    """How each field is written when it has no value: the teacher's commonest way."""

    def visit(node: Node, path: Path) -> None:
        styles: Counter[AbsentStyle] = Counter()
        for answer in answers:
            parent = value_at(answer.document, path[:-1]) if path else None
            if path and not isinstance(parent, dict):
                continue
            if path and path[-1] not in parent:  # type: ignore[operator]
                styles["omitted"] += 1
                continue
            value = value_at(answer.document, path)
            if value is None:
                styles["null"] += 1
            elif value in ("", {}):
                styles["empty"] += 1
        node.absent = styles.most_common(1)[0][0] if styles else "omitted"
        for key in node.children:
            visit(node.nodes[key], (*path, key))

    visit(root, ())


def _input_order(node: Node, path: Path, answers: list[_Answer], spans: set[Path]) -> None:
    """An object whose copied fields the teacher writes in the order they occur in the
    input (and not in one fixed order) is ordered by input position."""
    if not node.children:
        return
    span_keys = [k for k in node.children if (*path, k) in spans]
    if len(span_keys) >= 2:
        by_input = by_schema = judged = 0
        for answer in answers:
            written = value_at(answer.document, path)
            if not isinstance(written, dict):
                continue
            keys = [k for k in written if k in span_keys and isinstance(written[k], str)]
            if len(keys) < 2:
                continue
            judged += 1
            starts = [answer.source.find(written[k]) for k in keys]
            by_input += starts == sorted(starts)
            by_schema += keys == [k for k in node.children if k in keys]
        if judged and by_input > by_schema and by_input >= 0.95 * judged:
            node.order = "input"
    for key in node.children:
        _input_order(node.nodes[key], (*path, key), answers, spans)
