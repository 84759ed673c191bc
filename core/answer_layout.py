"""How a teacher writes its JSON answers, so that a student's answer reads like its own.

An extractor student decides field values; the layout puts them back the way the teacher
writes them: its key order (a fixed order per object, or for copied fields the order they
occur in the input), how it writes a field it has no value for (leaves it out, ``null``
or ``""``; an object with nothing in it: left out, ``null`` or ``{}``), and its
serialisation (``json.dumps``'s indent, separators and ``ensure_ascii``, as observed).

It also names where a task's answer lives: in the message content (``response_format``)
or in the arguments of a call of one function (tool calls).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Path = tuple[str, ...]
AbsentStyle = Literal["omitted", "null", "empty"]
Order = Literal["schema", "input"]

ABSENT: Any = object()  # a field the answer has no value for


@dataclass(frozen=True, slots=True)
class Serialisation:
    indent: int | None = None
    compact: bool = False  # separators (",", ":") instead of (", ", ": ")
    ensure_ascii: bool = True

    def dumps(self, document: Any) -> str:
        if self.compact:
            separators = (",", ":")
        else:
            separators = (",", ": ") if self.indent is not None else (", ", ": ")
        return json.dumps(
            document, indent=self.indent, separators=separators, ensure_ascii=self.ensure_ascii
        )

    @classmethod
    def candidates(cls) -> list[Serialisation]:
        return [
            cls(indent, compact, ascii_only)
            for indent in (None, 2, 4)
            for compact in (False, True)
            for ascii_only in (True, False)
        ]


@dataclass(slots=True)
class Node:
    """One key of the answer: an object (``children`` in the teacher's order) or a leaf."""

    children: list[str] = field(default_factory=list)  # empty for a leaf
    nodes: dict[str, Node] = field(default_factory=dict)
    absent: AbsentStyle = "omitted"
    order: Order = "schema"

    @property
    def is_object(self) -> bool:
        return bool(self.children)

    def child(self, key: str) -> Node:
        if key not in self.nodes:
            self.nodes[key] = Node()
            self.children.append(key)
        return self.nodes[key]

    def document(self) -> dict[str, Any]:
        return {
            "absent": self.absent,
            "order": self.order,
            "children": [[key, self.nodes[key].document()] for key in self.children],
        }

    @classmethod
    def from_document(cls, data: dict[str, Any]) -> Node:
        node = cls(absent=data["absent"], order=data["order"])
        for key, child in data["children"]:
            node.children.append(key)
            node.nodes[key] = cls.from_document(child)
        return node


@dataclass(slots=True)
class Layout:
    """The teacher's way of writing one task's answers."""

    root: Node
    serialisation: Serialisation
    function: str | None = None  # tool calls: the one function the teacher calls

    def render(self, values: dict[Path, Any], positions: dict[Path, int] | None = None) -> str:
        """The answer for ``values`` (by leaf path; :data:`ABSENT` or missing: no value),
        ``positions``: where copied values start in the input, for an input-ordered object."""
        document = _render(self.root, (), values, positions or {})
        return self.serialisation.dumps({} if document is ABSENT else document)

    def document(self) -> dict[str, Any]:
        s = self.serialisation
        return {
            "root": self.root.document(),
            "serialisation": {
                "indent": s.indent,
                "compact": s.compact,
                "ensure_ascii": s.ensure_ascii,
            },
            "function": self.function,
        }

    @classmethod
    def from_document(cls, data: dict[str, Any]) -> Layout:
        s = data["serialisation"]
        return cls(
            root=Node.from_document(data["root"]),
            serialisation=Serialisation(s["indent"], s["compact"], s["ensure_ascii"]),
            function=data.get("function"),
        )


def _render(node: Node, path: Path, values: dict[Path, Any], positions: dict[Path, int]) -> Any:
    if not node.is_object:
        value = values.get(path, ABSENT)
        if value is ABSENT or value is None or value == "":
            return {"omitted": ABSENT, "null": None, "empty": ""}[node.absent]
        return value
    keys = list(node.children)
    if node.order == "input":
        rank = {key: number for number, key in enumerate(keys)}
        keys.sort(key=lambda k: (positions.get((*path, k), 1 << 30), rank[k]))
    document = {}
    for key in keys:
        value = _render(node.nodes[key], (*path, key), values, positions)
        if value is not ABSENT:
            document[key] = value
    if not document:
        return {"omitted": ABSENT, "null": None, "empty": {}}[node.absent]
    return document


def leaves(node: Node, path: Path = ()) -> list[Path]:
    """Every leaf path under ``node``, in the teacher's order."""
    if not node.is_object:
        return [path]
    found: list[Path] = []
    for key in node.children:
        found += leaves(node.nodes[key], (*path, key))
    return found


def call_document(answer: str) -> tuple[dict[str, Any], str, str] | None:
    """A curated tool-call answer (``[{"name", "arguments"}]``, one call): its arguments as
    a document, their text, and the function's name."""
    try:
        calls = json.loads(answer)
    except ValueError:
        return None
    if not isinstance(calls, list) or len(calls) != 1 or not isinstance(calls[0], dict):
        return None
    name, arguments = calls[0].get("name"), calls[0].get("arguments")
    if not isinstance(name, str) or not isinstance(arguments, str):
        return None
    try:
        document = json.loads(arguments)
    except ValueError:
        return None
    return (document, arguments, name) if isinstance(document, dict) else None


def answer_document(answer: str) -> tuple[dict[str, Any], str, str | None] | None:
    """A curated answer's JSON document, its text, and the function called (None for an
    answer in the message content)."""
    call = call_document(answer)
    if call is not None:
        return call
    try:
        document = json.loads(answer)
    except ValueError:
        return None
    return (document, answer, None) if isinstance(document, dict) else None
