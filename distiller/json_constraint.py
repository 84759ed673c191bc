"""Decoding held to a JSON grammar, token by token: which tokens of a tokenizer's
vocabulary keep an answer inside the grammar, and can still close it in the tokens left.

:class:`Vocabulary` is a tokenizer's tokens as bytes in a trie, built once per tokenizer.
:class:`Grammar` is one response format's grammar with a cache of what each state allows
(states recur: every answer to a schema passes the same keys), built once per schema.
:class:`JsonConstraint` follows one answer: :meth:`~JsonConstraint.allowed` gives the
tokens the next one may be, :meth:`~JsonConstraint.advance` takes the one picked.

Inside a string most tokens are allowed, so those of whole UTF-8 characters without a
quote, backslash or control byte are allowed there at once (by their character counts
when the schema bounds the string's length), and only the others are tried byte by byte.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, TypeGuard

import numpy as np
import torch
from numpy.typing import NDArray

from distiller.json_grammar import Node, SchemaError, compile_schema, json_object
from distiller.json_machine import Stack, Str, accepting, advance, advance_bytes, distance, start

CACHED_STATES = 2048  # per grammar
CACHED_GRAMMARS = 64  # per vocabulary
_ENDS = -1  # the trie key under which a node keeps the tokens that end there

Trie = dict[int, Any]
Options = tuple[NDArray[np.int64], NDArray[np.int64]]  # token ids, bytes each leaves to write


class ResponseFormatError(ValueError):
    """A ``response_format`` that cannot be followed (malformed, or its schema is not one)."""


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-character map, which byte-level BPE tokens are in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    characters = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, characters, strict=True)}


def _insert(trie: Trie, data: bytes, token: int) -> None:
    node = trie
    for byte in data:
        node = node.setdefault(byte, {})
    node.setdefault(_ENDS, []).append(token)


class Vocabulary:
    """A tokenizer's tokens as bytes: special tokens and tokens of no known bytes are never
    allowed; ``size`` is the model's logits width (it may exceed the tokenizer's)."""

    def __init__(self, tokenizer: Any, size: int) -> None:
        self.size = size
        special = set(tokenizer.all_special_ids) | set(
            getattr(tokenizer, "added_tokens_decoder", {}) or {}
        )
        decoder = _byte_decoder()
        self.token_bytes: list[bytes | None] = []
        for token in range(min(size, len(tokenizer))):
            data = None if token in special else _bytes_of(tokenizer, token, decoder)
            self.token_bytes.append(data or None)
        self.trie: Trie = {}
        self.unsafe_trie: Trie = {}  # with a quote, backslash, control byte or part of a character
        safe: list[int] = []
        characters: list[int] = []
        for token, data in enumerate(self.token_bytes):
            if data is None:
                continue
            _insert(self.trie, data, token)
            if any(b in (0x22, 0x5C) or b < 0x20 for b in data) or not _whole_characters(data):
                _insert(self.unsafe_trie, data, token)
            else:
                safe.append(token)
                characters.append(sum(1 for b in data if b & 0xC0 != 0x80))
        self.safe_ids = np.array(safe, dtype=np.int64)
        self.safe_characters = np.array(characters, dtype=np.int64)
        self.grammars: OrderedDict[str, Grammar] = OrderedDict()  # by schema, most recent last


def _whole_characters(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _bytes_of(tokenizer: Any, token: int, decoder: dict[str, int]) -> bytes | None:
    piece = tokenizer.convert_ids_to_tokens(token)
    if isinstance(piece, str) and piece and all(c in decoder for c in piece):
        return bytes(decoder[c] for c in piece)
    text = tokenizer.decode([token])
    return None if "\ufffd" in text else text.encode()


_VOCABULARIES: weakref.WeakKeyDictionary[Any, dict[int, Vocabulary]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def vocabulary(tokenizer: Any, size: int) -> Vocabulary:
    """The :class:`Vocabulary` of ``tokenizer`` for logits of ``size``, built on first use
    (and forgotten with the tokenizer)."""
    with _LOCK:
        sizes = _VOCABULARIES.setdefault(tokenizer, {})
        found = sizes.get(size)
        if found is None:
            found = sizes[size] = Vocabulary(tokenizer, size)
        return found


class Grammar:
    """One response format's grammar over one vocabulary, with what each state allows."""

    def __init__(self, node: Node, words: Vocabulary) -> None:
        self.node = node
        self.words = words
        self._cache: OrderedDict[Stack, Options] = OrderedDict()

    def options(self, state: Stack) -> Options:
        """The tokens allowed after ``state``, and the bytes each leaves to write."""
        ids, left = self._walked(state)
        top = state[-1] if state else None
        if not _in_string(top):
            return ids, left
        # Not cached: inside a string of bounded length every length is a state of its own.
        safe, characters = self.words.safe_ids, self.words.safe_characters
        if top.node.max_length is not None:
            fits = characters <= top.node.max_length - top.length
            safe, characters = safe[fits], characters[fits]
        needed = max(0, top.node.min_length - top.length)
        here = distance(state)
        return np.concatenate([ids, safe]), np.concatenate(
            [left, here - np.minimum(characters, needed)]
        )

    def _walked(self, state: Stack) -> Options:
        """The allowed tokens found byte by byte (inside a string, only those with a quote,
        backslash, control byte or part of a character), cached per state."""
        found = self._cache.get(state)
        if found is not None:
            self._cache.move_to_end(state)
            return found
        ids: list[int] = []
        left: list[int] = []
        in_string = _in_string(state[-1] if state else None)
        _walk(self.words.unsafe_trie if in_string else self.words.trie, state, ids, left)
        found = np.array(ids, dtype=np.int64), np.array(left, dtype=np.int64)
        self._cache[state] = found
        if len(self._cache) > CACHED_STATES:
            self._cache.popitem(last=False)
        return found


def _in_string(top: Any) -> TypeGuard[Str]:
    """Inside a string, between characters: where the string's fast path applies."""
    return isinstance(top, Str) and top.escape == 0 and top.pending == 0


def _walk(trie: Trie, state: Stack, ids: list[int], left: list[int]) -> None:
    for byte, child in trie.items():
        if byte == _ENDS:
            continue
        following = advance(state, byte)
        if following is None:
            continue
        ends = child.get(_ENDS)
        if ends:
            remaining = distance(following)
            ids.extend(ends)
            left.extend([remaining] * len(ends))
        if len(child) > (1 if ends else 0):
            _walk(child, following, ids, left)


def grammar_for(
    response_format: Mapping[str, Any] | None, tokenizer: Any, size: int
) -> Grammar | None:
    """The grammar a chat request's ``response_format`` asks for (None: plain text), cached
    per schema. Raises :class:`ResponseFormatError` for one that cannot be followed."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        schema: Any = None
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise ResponseFormatError("response_format json_schema needs json_schema.schema")
        schema = spec["schema"]
    else:
        raise ResponseFormatError(f"response_format type {kind!r} is not supported")
    words = vocabulary(tokenizer, size)
    key = json.dumps(schema, sort_keys=True)
    with _LOCK:
        found = words.grammars.get(key)
        if found is not None:
            words.grammars.move_to_end(key)
            return found
    try:
        node = json_object() if schema is None else compile_schema(schema)
    except SchemaError as exc:
        raise ResponseFormatError(str(exc)) from exc
    found = Grammar(node, words)
    with _LOCK:
        words.grammars[key] = found
        if len(words.grammars) > CACHED_GRAMMARS:
            words.grammars.popitem(last=False)
    return found


class JsonConstraint:
    """One answer held to ``grammar``: the tokens it may take next, given the tokens left,
    and where it stands after each. ``eos_ids`` end the answer, allowed once it is
    complete."""

    def __init__(self, grammar: Grammar, eos_ids: frozenset[int]) -> None:
        self.grammar = grammar
        self.eos_ids = sorted(eos_ids)
        self.state: Stack = start(grammar.node)

    def allowed(self, tokens_left: int) -> torch.Tensor:
        """A boolean mask over the vocabulary for the next token, ``tokens_left`` counting
        it. Tokens that would leave too little room to close the document (and end the
        answer) are left out, unless no token leaves enough."""
        mask = np.zeros(self.grammar.words.size, dtype=np.bool_)
        ids, left = self.grammar.options(self.state)
        if len(ids):
            fits = left <= tokens_left - 2  # the bytes left, one token each, and the end
            chosen = ids[fits] if bool(fits.any()) else ids[left == left.min()]
            mask[chosen] = True
        if accepting(self.state) or not len(ids):
            mask[self.eos_ids] = True
        return torch.from_numpy(mask)

    def advance(self, token: int) -> None:
        """The answer took ``token`` (not an end-of-turn token)."""
        data = (
            self.grammar.words.token_bytes[token]
            if token < len(self.grammar.words.token_bytes)
            else None
        )
        following = advance_bytes(self.state, data) if data else None
        if following is None:
            raise AssertionError(f"token {token} was not allowed after this state")
        self.state = following
