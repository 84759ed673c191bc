"""Where a JSON document being written stands in its grammar, byte by byte.

A state is a :data:`Stack` of frames, one per value being written (the innermost last):
:func:`start` is the state before the first byte, :func:`advance` the state after one more
(None: that byte leaves the grammar), :func:`accepting` says whether the document may end
there and :func:`distance` is the fewest bytes that complete it. States are tuples of
named tuples, hashable and cheap to copy, so a decoder can try many continuations of one
state and cache what it learns per state. Whitespace between tokens and the digits of a
number are bounded, so a document cannot grow without end.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from distiller.json_grammar import (
    ArrayNode,
    LiteralNode,
    Node,
    NumberNode,
    ObjectNode,
    StringNode,
    UnionNode,
    any_string,
    any_value,
    shortest,
)

MAX_WHITESPACE = 16  # bytes of whitespace in a row
MAX_DIGITS = 16  # per part of a number
WHITESPACE = frozenset(b" \t\n\r")
DIGITS = frozenset(b"0123456789")
HEX = frozenset(b"0123456789abcdefABCDEF")
ESCAPES = frozenset(b'"\\/bfnrt')
QUOTE, BACKSLASH, COLON, COMMA = ord('"'), ord("\\"), ord(":"), ord(",")

Stack = tuple[Any, ...]


def start(node: Node) -> Stack:
    """The state before the document's first byte."""
    return (Value(node, 0),)


def advance(stack: Stack, byte: int) -> Stack | None:
    """``stack`` after ``byte``, or None when the byte leaves the grammar."""
    if not stack:
        return None  # nothing after the document
    result: Stack | None = stack[-1].step(stack, byte)
    return result


def advance_bytes(stack: Stack | None, data: bytes) -> Stack | None:
    """``stack`` after every byte of ``data`` (None once one leaves the grammar)."""
    for byte in data:
        if stack is None:
            return None
        stack = advance(stack, byte)
    return stack


def accepting(stack: Stack) -> bool:
    """Whether the document may end here."""
    while stack and stack[-1].complete():
        stack = _finish(stack)
    return not stack


def distance(stack: Stack) -> int:
    """The fewest bytes that complete the document from here."""
    return sum(frame.remaining() for frame in stack)


def _finish(stack: Stack) -> Stack:
    """The top frame's value is complete: pop it and tell its parent."""
    rest = stack[:-1]
    if not rest:
        return rest
    return (*rest[:-1], rest[-1].child_done())


def _then(stack: Stack, *frames: Any) -> Stack:
    """``stack`` with its top frame replaced by ``frames``."""
    return (*stack[:-1], *frames)


def _ends(frame: Any, stack: Stack, byte: int) -> Stack | None:
    """A frame whose value may end before ``byte`` (a number, a literal): end it and give
    the byte to its parent."""
    if not frame.complete():
        return None
    return advance(_finish(stack), byte)


class Value(NamedTuple):
    """Before a value of ``node``: whitespace, then its first byte."""

    node: Node
    ws: int

    def step(self, stack: Stack, byte: int) -> Stack | None:
        if byte in WHITESPACE:
            return _then(stack, Value(self.node, self.ws + 1)) if self.ws < MAX_WHITESPACE else None
        node = self.node
        if isinstance(node, UnionNode):
            found = node.branches.get(byte)
            if found is None:
                return None
            node = found
        return _begin(stack, node, byte)

    def complete(self) -> bool:
        return False

    def remaining(self) -> int:
        return shortest(self.node)


def _begin(stack: Stack, node: Node, byte: int) -> Stack | None:
    if isinstance(node, ObjectNode):
        return _then(stack, Obj(node, frozenset(), OPEN, b"", b"", 0)) if byte == ord("{") else None
    if isinstance(node, ArrayNode):
        return _then(stack, Arr(node, 0, OPEN, 0)) if byte == ord("[") else None
    if isinstance(node, StringNode):
        return _then(stack, Str(node, 0, 0)) if byte == QUOTE else None
    if isinstance(node, NumberNode):
        if byte == ord("-"):
            return _then(stack, Num(node.integer, SIGN, 0))
        if byte in DIGITS:
            return _then(stack, Num(node.integer, ZERO if byte == ord("0") else INTEGER, 1))
        return None
    if isinstance(node, LiteralNode):
        return Lit(node.options, 0).step(_then(stack, Lit(node.options, 0)), byte)
    return Value(node, 0).step(stack, byte)


# An object's or array's phases.
OPEN, KEY, COLON_NEXT, VALUE, AFTER, COMMA_NEXT = range(6)


class Obj(NamedTuple):
    """Inside an object: the keys written, the phase, a key being written (``partial``,
    for an object of declared keys), the key whose value is being written."""

    node: ObjectNode
    seen: frozenset[bytes]
    phase: int
    partial: bytes
    key: bytes
    ws: int

    def _keys(self) -> list[bytes]:
        return [k for k in self.node.properties if k not in self.seen]

    def step(self, stack: Stack, byte: int) -> Stack | None:
        phase = self.phase
        if phase == KEY:
            return self._key_byte(stack, byte)
        if byte in WHITESPACE and phase != VALUE:
            return _then(stack, self._replace(ws=self.ws + 1)) if self.ws < MAX_WHITESPACE else None
        if phase in (OPEN, COMMA_NEXT) and byte == QUOTE:
            if not self.node.closed:
                return _then(stack, self._replace(phase=KEY, ws=0), Str(any_string(), 0, 0))
            return (
                _then(stack, self._replace(phase=KEY, partial=b"", ws=0)) if self._keys() else None
            )
        if byte == ord("}") and (
            (phase == OPEN and not self.node.required)
            or (phase == AFTER and self.node.required <= self.seen)
        ):
            return _finish(stack)
        if phase == COLON_NEXT and byte == COLON:
            child = self.node.properties.get(self.key) if self.node.closed else None
            frame = Value(child if child is not None else any_value(), 0)
            return _then(stack, self._replace(phase=VALUE, ws=0), frame)
        if phase == AFTER and byte == COMMA and (not self.node.closed or self._keys()):
            return _then(stack, self._replace(phase=COMMA_NEXT, ws=0))
        return None

    def _key_byte(self, stack: Stack, byte: int) -> Stack | None:
        longer = self.partial + bytes((byte,))
        keys = self._keys()
        # An unescaped quote never occurs inside a key's JSON, so extending comes first.
        if any(k.startswith(longer) for k in keys):
            return _then(stack, self._replace(partial=longer))
        if byte == QUOTE and self.partial in keys:
            return _then(stack, self._replace(phase=COLON_NEXT, key=self.partial, partial=b""))
        return None

    def child_done(self) -> Obj:
        if self.phase == KEY:  # a key of an object of any keys
            return self._replace(phase=COLON_NEXT, ws=0)
        return self._replace(phase=AFTER, seen=self.seen | {self.key}, key=b"", ws=0)

    def complete(self) -> bool:
        return False

    def remaining(self) -> int:
        node, phase = self.node, self.phase
        if not node.closed:
            return {OPEN: 1, KEY: 3, COLON_NEXT: 3, VALUE: 1, AFTER: 1, COMMA_NEXT: 5}[phase]
        done = self.seen | ({self.key} if phase in (COLON_NEXT, VALUE) else set())
        left = [k for k in node.required if k not in done]
        rest = sum(len(k) + 4 + shortest(node.properties[k]) for k in left) + 1
        if phase == OPEN:
            return rest - 1 if left else 1  # no comma before the first key
        if phase == KEY:
            options = [k for k in self._keys() if k.startswith(self.partial)]
            return min(self._through(k, len(self.partial)) for k in options)
        if phase == COLON_NEXT:
            return 1 + shortest(node.properties[self.key]) + rest
        if phase == COMMA_NEXT:
            if left:
                return rest - 1
            return 1 + min(self._through(k, 0) for k in self._keys())
        return rest  # VALUE (its value above) or AFTER

    def _through(self, key: bytes, written: int) -> int:
        """Bytes to finish the object after writing ``key`` (``written`` bytes of it are)."""
        left = [k for k in self.node.required if k not in self.seen and k != key]
        others = sum(len(k) + 4 + shortest(self.node.properties[k]) for k in left)
        return len(key) - written + 2 + shortest(self.node.properties[key]) + others + 1


class Arr(NamedTuple):
    """Inside an array: items written and the phase."""

    node: ArrayNode
    written: int
    phase: int
    ws: int

    def step(self, stack: Stack, byte: int) -> Stack | None:
        node, phase = self.node, self.phase
        if byte in WHITESPACE:
            return _then(stack, self._replace(ws=self.ws + 1)) if self.ws < MAX_WHITESPACE else None
        if byte == ord("]") and (
            (phase == OPEN and node.min_items == 0)
            or (phase == AFTER and self.written >= node.min_items)
        ):
            return _finish(stack)
        if phase == AFTER:
            if byte == COMMA and (node.max_items is None or self.written < node.max_items):
                return _then(stack, self._replace(phase=COMMA_NEXT, ws=0))
            return None
        if phase == OPEN and node.max_items == 0:
            return None
        return advance(_then(stack, self._replace(phase=VALUE, ws=0), Value(node.items, 0)), byte)

    def child_done(self) -> Arr:
        return self._replace(written=self.written + 1, phase=AFTER, ws=0)

    def complete(self) -> bool:
        return False

    def remaining(self) -> int:
        item, count = shortest(self.node.items), self.written
        if self.phase == VALUE:
            count += 1
        needed = max(0, self.node.min_items - count)
        if self.phase == COMMA_NEXT:
            return item + max(0, needed - 1) * (item + 1) + 1
        if self.phase == OPEN:
            return needed * item + max(0, needed - 1) + 1
        return needed * (item + 1) + 1


class Str(NamedTuple):
    """Inside a string: characters written (counted only when the schema bounds them),
    where an escape stands (0 none, 1 after the backslash, 2 to 5 in ``\\uXXXX``), and
    the continuation bytes a UTF-8 character still needs (``pending``, the next one in
    ``low``..``high``), so that the string is valid UTF-8."""

    node: StringNode
    length: int
    escape: int
    pending: int = 0
    low: int = 0x80
    high: int = 0xBF

    def _counted(self) -> bool:
        return self.node.min_length > 0 or self.node.max_length is not None

    def _character(self) -> Str | None:
        """One more character written (after its first byte)."""
        if not self._counted():
            return self
        length = self.length + 1
        if self.node.max_length is not None and length > self.node.max_length:
            return None
        return self._replace(length=length)

    def step(self, stack: Stack, byte: int) -> Stack | None:
        escape = self.escape
        if self.pending:
            if not self.low <= byte <= self.high:
                return None
            return _then(stack, self._replace(pending=self.pending - 1, low=0x80, high=0xBF))
        if escape == 0:
            if byte == QUOTE:
                return _finish(stack) if self.length >= self.node.min_length else None
            if byte == BACKSLASH:
                return _then(stack, self._replace(escape=1))
            if byte < 0x20:
                return None
            grown = self._character()
            if grown is not None and byte >= 0x80:
                lead = _UTF8_LEADS.get(byte)
                grown = grown._replace(pending=lead[0], low=lead[1], high=lead[2]) if lead else None
            return _then(stack, grown) if grown is not None else None
        if escape == 1:
            if byte == ord("u"):
                return _then(stack, self._replace(escape=2))
            grown = self._character() if byte in ESCAPES else None
            return _then(stack, grown._replace(escape=0)) if grown is not None else None
        if byte not in HEX:
            return None
        if escape < 5:
            return _then(stack, self._replace(escape=escape + 1))
        grown = self._character()
        return _then(stack, grown._replace(escape=0)) if grown is not None else None

    def child_done(self) -> Str:
        raise AssertionError("a string holds no values")

    def complete(self) -> bool:
        return False

    def remaining(self) -> int:
        needed = max(0, self.node.min_length - self.length)
        if self.pending:
            return self.pending + needed + 1
        if self.escape:
            return (1 if self.escape == 1 else 6 - self.escape) + max(0, needed - 1) + 1
        return needed + 1


def _utf8_leads() -> dict[int, tuple[int, int, int]]:
    """Each UTF-8 lead byte: the continuation bytes it needs and the range of the first
    (narrower after E0, ED, F0 and F4: no overlong forms, surrogates, or beyond U+10FFFF)."""
    leads = {b: (1, 0x80, 0xBF) for b in range(0xC2, 0xE0)}
    leads.update({b: (2, 0x80, 0xBF) for b in range(0xE1, 0xF0)})
    leads.update({b: (3, 0x80, 0xBF) for b in range(0xF1, 0xF4)})
    leads.update({0xE0: (2, 0xA0, 0xBF), 0xED: (2, 0x80, 0x9F)})
    leads.update({0xF0: (3, 0x90, 0xBF), 0xF4: (3, 0x80, 0x8F)})
    return leads


_UTF8_LEADS = _utf8_leads()


# A number's phases: after the sign, after a leading 0, in the integer part, after the
# point, in the fraction, after the e, after the exponent's sign, in the exponent.
SIGN, ZERO, INTEGER, POINT, FRACTION, E, E_SIGN, EXPONENT = range(8)
_NUMBER_ENDS = frozenset({ZERO, INTEGER, FRACTION, EXPONENT})


class Num(NamedTuple):
    integer: bool
    phase: int
    digits: int

    def step(self, stack: Stack, byte: int) -> Stack | None:
        phase, digit = self.phase, byte in DIGITS
        following: Num | None = None
        if phase in (SIGN, E, E_SIGN, POINT) and digit:
            after = {SIGN: ZERO if byte == ord("0") else INTEGER, POINT: FRACTION}
            following = Num(self.integer, after.get(phase, EXPONENT), 1)
        elif phase == E and byte in b"+-":
            following = Num(self.integer, E_SIGN, 0)
        elif phase in (INTEGER, FRACTION, EXPONENT) and digit:
            following = Num(self.integer, phase, self.digits + 1)
            if self.digits >= MAX_DIGITS:
                following = None
        elif phase in (ZERO, INTEGER) and byte == ord(".") and not self.integer:
            following = Num(self.integer, POINT, 0)
        elif phase in (ZERO, INTEGER, FRACTION) and byte in b"eE" and not self.integer:
            following = Num(self.integer, E, 0)
        if following is not None:
            return _then(stack, following)
        return _ends(self, stack, byte)

    def child_done(self) -> Num:
        raise AssertionError("a number holds no values")

    def complete(self) -> bool:
        return self.phase in _NUMBER_ENDS

    def remaining(self) -> int:
        return 0 if self.complete() else 1


class Lit(NamedTuple):
    """Inside a literal (``true``, ``null``, an enum's value): the options still open and
    how many bytes of them are written."""

    options: tuple[bytes, ...]
    written: int

    def step(self, stack: Stack, byte: int) -> Stack | None:
        at = self.written
        longer = tuple(o for o in self.options if len(o) > at and o[at] == byte)
        if longer:
            frame = Lit(longer, at + 1)
            if all(len(o) == at + 1 for o in longer):
                return _finish(_then(stack, frame))
            return _then(stack, frame)
        return _ends(self, stack, byte)

    def child_done(self) -> Lit:
        raise AssertionError("a literal holds no values")

    def complete(self) -> bool:
        return self.written > 0 and any(len(o) == self.written for o in self.options)

    def remaining(self) -> int:
        return min(len(o) - self.written for o in self.options)
