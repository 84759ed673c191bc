"""A classifier head: its stored format and its predictions."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest

from core.classifier import BUNDLED_ENCODER, Head, encoder_id


def unit(*values: float) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def head(temperature: float = 1.0) -> Head:
    """Two labels along the first two axes of a 3-dimensional embedding."""
    return Head(
        answers=("Refund", "billing."),
        weights=np.array([[4.0, -4.0], [-4.0, 4.0], [0.0, 0.0]], dtype=np.float32),
        bias=np.zeros(2, dtype=np.float32),
        temperature=temperature,
        centroids=np.stack([unit(1, 0, 0), unit(0, 1, 0)]),
        min_similarity=0.5,
        encoder=BUNDLED_ENCODER,
    )


def test_prediction_is_the_teachers_answer_string_with_its_probability() -> None:
    prediction = head().predict(unit(1, 0.1, 0))
    assert prediction.answer == "Refund"
    assert 0.5 < prediction.probability < 1.0
    assert prediction.logprob == pytest.approx(math.log(prediction.probability))
    assert [answer for answer, _ in prediction.ranked] == ["Refund", "billing."]
    assert sum(math.exp(logprob) for _, logprob in prediction.ranked) == pytest.approx(1.0)


def test_temperature_softens_or_sharpens_the_probabilities() -> None:
    vector = unit(1, 0.3, 0)
    sharp = head(temperature=0.5).predict(vector).probability
    plain = head(temperature=1.0).predict(vector).probability
    soft = head(temperature=4.0).predict(vector).probability
    assert sharp > plain > soft > 0.5


def test_input_far_from_every_label_is_unfamiliar() -> None:
    assert head().predict(unit(1, 0.2, 0.1)).familiar
    far = head().predict(unit(0.2, 0.1, 1))
    assert not far.familiar
    assert far.similarity < 0.5


def test_head_survives_the_round_trip_through_bytes_and_files(tmp_path: Path) -> None:
    original = head(temperature=0.7)
    again = Head.from_bytes(original.to_bytes())
    loaded = Head.load(original.save(tmp_path / "v1" / "head.npz"))
    for copy in (again, loaded):
        assert copy.answers == original.answers
        assert copy.temperature == pytest.approx(0.7)
        assert copy.encoder == BUNDLED_ENCODER
        vector = unit(0.3, 1, 0)
        assert copy.predict(vector) == original.predict(vector)


def test_other_npz_files_are_refused() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(b'{"format": "something else"}', dtype=np.uint8))
    with pytest.raises(ValueError, match="not a classifier head"):
        Head.from_bytes(buffer.getvalue())


def test_heads_name_their_encoder_independently_of_where_it_is_installed() -> None:
    assert encoder_id(None) == BUNDLED_ENCODER
    assert encoder_id("sentence-transformers/all-mpnet-base-v2") == (
        "sentence-transformers/all-mpnet-base-v2"
    )
