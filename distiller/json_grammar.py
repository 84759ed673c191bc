"""A JSON schema as grammar nodes, which ``distiller.json_machine`` walks byte by byte.

:func:`compile_schema` turns a JSON schema into nodes; :func:`json_object` and
:func:`any_value` are the generic grammars; :func:`shortest` is the length of a node's
shortest document (what closing an answer that runs out of tokens costs).

The subset of JSON Schema followed: ``type`` (one or a list), ``properties`` with
``required`` (only the declared properties are written; without ``properties`` an object
takes any keys), ``enum`` and ``const`` (any JSON values), ``anyOf``/``oneOf`` whose
branches start differently (e.g. a type or null), ``items`` with ``minItems``/``maxItems``,
``minLength``/``maxLength``, and ``$ref`` into ``$defs``/``definitions``. Anything else
(``pattern``, ``format``, numeric bounds, ``allOf``, branches that start alike, recursion
deeper than :data:`MAX_REF_DEPTH`) is written as generic JSON of the stated type, or of
any type: the answer always parses, and may then miss the schema.
"""

from __future__ import annotations

import functools
import json
import weakref
from dataclasses import dataclass, field
from typing import Any

MAX_REF_DEPTH = 4


class SchemaError(ValueError):
    """The schema is not a JSON schema (not an object, a ``$ref`` that leads nowhere)."""


@dataclass(eq=False)
class ObjectNode:
    properties: dict[bytes, Node]  # key as its JSON string's inner bytes: the node
    required: frozenset[bytes]
    closed: bool  # only the declared keys (else any key, any value)


@dataclass(eq=False)
class ArrayNode:
    items: Node
    min_items: int = 0
    max_items: int | None = None


@dataclass(eq=False)
class StringNode:
    min_length: int = 0
    max_length: int | None = None


@dataclass(eq=False)
class NumberNode:
    integer: bool


@dataclass(eq=False)
class LiteralNode:
    options: tuple[bytes, ...]  # JSON serialisations, e.g. b'"red"', b"true", b"null"


@dataclass(eq=False)
class UnionNode:
    branches: dict[int, Node] = field(default_factory=dict)  # first byte: node


Node = ObjectNode | ArrayNode | StringNode | NumberNode | LiteralNode | UnionNode


@functools.cache
def any_value() -> UnionNode:
    """Any JSON value (one node, so that states holding it are equal)."""
    union = UnionNode()
    array = ArrayNode(items=union)
    starts: dict[int, Node] = {ord("{"): json_object()}
    starts[ord("[")] = array
    starts[ord('"')] = any_string()
    starts.update({b: NumberNode(integer=False) for b in b"-0123456789"})
    starts[ord("t")] = starts[ord("f")] = LiteralNode((b"true", b"false"))
    starts[ord("n")] = LiteralNode((b"null",))
    union.branches = starts
    return union


@functools.cache
def json_object() -> ObjectNode:
    """Any JSON object (``response_format: json_object``)."""
    return ObjectNode({}, frozenset(), closed=False)


@functools.cache
def any_string() -> StringNode:
    """Any string (an object key when the object takes any keys)."""
    return StringNode()


def first_bytes(node: Node) -> frozenset[int]:
    if isinstance(node, ObjectNode):
        return frozenset(b"{")
    if isinstance(node, ArrayNode):
        return frozenset(b"[")
    if isinstance(node, StringNode):
        return frozenset(b'"')
    if isinstance(node, NumberNode):
        return frozenset(b"-0123456789")
    if isinstance(node, LiteralNode):
        return frozenset(option[0] for option in node.options)
    return frozenset(node.branches)


def compile_schema(schema: Any) -> Node:
    """The grammar of documents ``schema`` accepts (see the module's note for the subset)."""
    if not isinstance(schema, dict):
        raise SchemaError(f"a JSON schema is an object, not {type(schema).__name__}")
    return _Compiler(schema).node(schema, 0)


class _Compiler:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root

    def node(self, schema: Any, depth: int) -> Node:
        if schema is True or schema == {} or not isinstance(schema, dict):
            return any_value()
        if "$ref" in schema:
            if depth >= MAX_REF_DEPTH:
                return any_value()
            return self.node(self._resolve(str(schema["$ref"])), depth + 1)
        if "const" in schema:
            return LiteralNode((_dumps(schema["const"]),))
        if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
            return LiteralNode(tuple(dict.fromkeys(_dumps(v) for v in schema["enum"])))
        branches = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(branches, list) and branches:
            return self._union([self.node(b, depth) for b in branches])
        kind = schema.get("type")
        if isinstance(kind, list):
            return self._union([self.node({**schema, "type": k}, depth) for k in kind])
        return self._typed(schema, kind, depth)

    def _typed(self, schema: dict[str, Any], kind: Any, depth: int) -> Node:
        if kind == "object" or (kind is None and "properties" in schema):
            properties = schema.get("properties")
            if not isinstance(properties, dict) or not properties:
                return json_object()
            nodes = {_key(k): self.node(v, depth) for k, v in properties.items()}
            required = frozenset(_key(k) for k in schema.get("required") or [] if k in properties)
            return ObjectNode(nodes, required, closed=True)
        if kind == "array":
            items = schema.get("items")
            return ArrayNode(
                items=self.node(items, depth) if items is not None else any_value(),
                min_items=int(schema.get("minItems", 0)),
                max_items=_optional_int(schema.get("maxItems")),
            )
        if kind == "string":
            return StringNode(
                int(schema.get("minLength", 0)), _optional_int(schema.get("maxLength"))
            )
        if kind in ("number", "integer"):
            return NumberNode(integer=kind == "integer")
        if kind == "boolean":
            return LiteralNode((b"true", b"false"))
        if kind == "null":
            return LiteralNode((b"null",))
        return any_value()

    def _union(self, nodes: list[Node]) -> Node:
        union = UnionNode()
        for node in nodes:
            for byte in first_bytes(node):
                if byte in union.branches and union.branches[byte] is not node:
                    return any_value()  # branches that start alike: generic JSON
                union.branches[byte] = node
        return union

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            raise SchemaError(f"only local references (#/...) are followed, not {ref!r}")
        target: Any = self.root
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise SchemaError(f"the reference {ref!r} leads nowhere in the schema")
            target = target[part]
        return target


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def _key(name: str) -> bytes:
    return _dumps(name)[1:-1]


def _optional_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) else None


_SHORTEST: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def shortest(node: Node) -> int:
    """Bytes of the shortest document of ``node`` (computed once per node)."""
    known = _SHORTEST.get(node)
    if known is None:
        known = _SHORTEST[node] = min_length(node)
    return known


def min_length(node: Node, _seen: frozenset[int] = frozenset()) -> int:
    """Bytes of the shortest document of ``node``."""
    if id(node) in _seen:
        return 1 << 20  # a recursion the shortest document never takes
    seen = _seen | {id(node)}
    if isinstance(node, ObjectNode):
        costs = [len(k) + 3 + min_length(node.properties[k], seen) for k in node.required]
        return 2 + sum(costs) + max(0, len(costs) - 1)
    if isinstance(node, ArrayNode):
        return 2 + node.min_items * min_length(node.items, seen) + max(0, node.min_items - 1)
    if isinstance(node, StringNode):
        return 2 + node.min_length
    if isinstance(node, NumberNode):
        return 1
    if isinstance(node, LiteralNode):
        return min(len(option) for option in node.options)
    return min(min_length(branch, seen) for branch in set(node.branches.values()))
