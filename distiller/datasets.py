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
