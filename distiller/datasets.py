"""Data the package ships (see distiller/data/README.md for sources and licences)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"


def clinc150_banking20() -> dict[str, Any]:
    """20 banking intents of CLINC150: ``intents``, ``train``/``val``/``test`` rows of
    ``[text, intent]``, and ``oos`` (out-of-scope utterances)."""
    document: dict[str, Any] = json.loads((DATA / "clinc150_banking20.json").read_text())
    return document


def snips_nlu7() -> dict[str, Any]:
    """The 7 SNIPS intents with slots: ``intents``, and ``train``/``validate`` rows of
    ``{"text", "intent", "slots": [[slot, words], ...]}``."""
    document: dict[str, Any] = json.loads((DATA / "snips_nlu7.json").read_text(encoding="utf-8"))
    return document


def snips_answer(row: dict[str, Any]) -> dict[str, Any]:
    """The gold answer to a SNIPS row, as the extraction teacher writes it."""
    return {"intent": row["intent"], "slots": {slot: words for slot, words in row["slots"]}}
