"""The personal-data scrubber: one rule for training text and for text at capture.

Curation applies it to the pairs a student trains on (``STILLROOM_SCRUB_PII``); the
capture path applies it before an exchange is written (``STILLROOM_SCRUB_PII_AT_CAPTURE``),
so that what the scrubber finds never reaches the store at all. It lives in ``core``
because both the distiller and the gateway use it, and they may not import each other.
"""

from __future__ import annotations

import re
from typing import Any

_PII = [
    ("<EMAIL>", re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")),
    ("<IBAN>", re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")),
    ("<CARD>", re.compile(r"\b(?:\d[ -]?){12,18}\d\b")),
    ("<PHONE>", re.compile(r"(?<!\w)\+?\d[\d ().-]{7,}\d\b")),
]

# The keys whose string values are text a person wrote or read, in every dialect's
# documents: Chat Completions (``content``, a part's ``text``), the Responses API
# (``instructions``, ``input``, an item's ``content``, a part's ``text``) and Anthropic's
# Messages (``system``, ``content``, a block's ``text``). Other strings (model names, ids,
# roles, tool names and JSON arguments, schemas) are left as they are: the scrubber's
# number patterns would corrupt them.
TEXT_KEYS = frozenset({"content", "text", "instructions", "input", "system"})


def scrub(text: str) -> str:
    """Replace emails, IBANs, card and phone numbers with placeholders."""
    for placeholder, pattern in _PII:
        text = pattern.sub(placeholder, text)
    return text


def scrub_document(document: Any) -> Any:
    """A copy of a request or answer document (any dialect) with every string under a
    :data:`TEXT_KEYS` key scrubbed, however deep; everything else as it was."""
    if isinstance(document, dict):
        return {key: _scrub_value(key, value) for key, value in document.items()}
    if isinstance(document, list):
        return [scrub_document(item) for item in document]
    return document


def _scrub_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value) if key in TEXT_KEYS else value
    if key in TEXT_KEYS and isinstance(value, list):
        # A list of texts (a prompt given as strings) or of parts, blocks and items.
        return [scrub(item) if isinstance(item, str) else scrub_document(item) for item in value]
    return scrub_document(value)
