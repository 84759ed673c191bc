"""A version's evaluation is a typed document that reads what every release wrote."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from core.evaluation import (
    TournamentEntrant,
    TournamentFigures,
    TrainingProfile,
    VersionEvaluation,
    read_evaluation,
)
from core.store import create_store_engine, create_tables
from core.tables import StudentVersion

# As the previous release's distiller wrote it: Evaluation.summary(), Candidate.figures(),
# the training profile, the held-out pairs, then the tournament added by the registry.
PREVIOUS_RELEASE: dict[str, Any] = {
    "metric": "label",
    "examples": 40,
    "agreement": 0.925,
    "base_agreement": None,
    "mean_score": 0.925,
    "target": 0.95,
    "share_at_target": 0.75,
    "threshold": -0.2113,
    "retained_share": 0.75,
    "retained_agreement": 0.9667,
    "training_seconds": 1.87,
    "latency_p50_ms": 4.21,
    "latency_p99_ms": None,
    "profile": {
        "models": ["gpt-4o-mini"],
        "response_formats": ["text"],
        "tools": False,
        "max_prompt_chars": 212,
    },
    "heldout": [["0f3a", True], ["9b1c", False]],
    "tournament": {
        "entrants": [
            {
                "number": 1,
                "kind": "classifier",
                "share_at_target": 0.75,
                "agreement": 0.925,
                "training_seconds": 1.87,
                "latency_p50_ms": 4.21,
            },
            {
                "number": 2,
                "kind": "lora",
                "share_at_target": 0.0,
                "agreement": 0.5,
                "training_seconds": None,
                "latency_p50_ms": None,
            },
        ],
        "winner": 1,
        "failed": {},
    },
}


def version(evaluation: dict[str, Any]) -> StudentVersion:
    return StudentVersion(
        id="v" * 32,
        task="t",
        number=1,
        base_model="-",
        adapter_name="t-v1",
        adapter_path="-",
        evaluation=evaluation,
    )


def test_the_previous_releases_evaluation_reads_with_its_types() -> None:
    evaluation = read_evaluation(version(PREVIOUS_RELEASE))
    assert evaluation.metric == "label"
    assert (evaluation.examples, evaluation.training_seconds) == (40, 1.87)
    assert evaluation.latency_p99_ms is None
    assert evaluation.profile == TrainingProfile(
        models=["gpt-4o-mini"], response_formats=["text"], tools=False, max_prompt_chars=212
    )
    assert evaluation.heldout == [("0f3a", True), ("9b1c", False)]
    assert evaluation.tournament is not None
    assert evaluation.tournament.winner == 1
    assert [e.kind for e in evaluation.tournament.entrants] == ["classifier", "lora"]


def test_the_previous_releases_evaluation_writes_back_unchanged() -> None:
    assert read_evaluation(version(PREVIOUS_RELEASE)).document() == PREVIOUS_RELEASE


def test_unknown_keys_are_kept() -> None:
    evaluation = read_evaluation(version({"examples": 3, "calibrated_by": "isotonic"}))
    assert evaluation.examples == 3
    assert evaluation.document() == {"examples": 3, "calibrated_by": "isotonic"}


def test_a_version_without_an_evaluation_reads_as_empty() -> None:
    evaluation = read_evaluation(version({}))
    assert (evaluation.profile, evaluation.heldout, evaluation.tournament) == (None, [], None)
    assert evaluation.document() == {}


def test_a_routing_profile_leaves_out_what_was_not_recorded() -> None:
    assert TrainingProfile(tools=False, max_prompt_chars=10).rules() == {
        "tools": False,
        "max_prompt_chars": 10,
    }


def test_an_evaluation_round_trips_through_the_store(database_url: str) -> None:
    written = VersionEvaluation(
        metric="json",
        examples=2,
        agreement=0.5,
        base_agreement=0.0,
        threshold=None,
        retained_share=0.0,
        training_seconds=12.5,
        latency_p50_ms=30.0,
        latency_p99_ms=41.0,
        profile=TrainingProfile(models=[], response_formats=["json_object"], tools=True),
        heldout=[("a", True), ("b", False)],
        tournament=TournamentFigures(
            entrants=[TournamentEntrant(number=1, kind="lora", share_at_target=0.0)],
            winner=1,
            failed={"classifier": "ValueError: one label"},
        ),
    )
    engine = create_store_engine(database_url)
    create_tables(engine)
    try:
        with Session(engine) as session:
            session.add(version(written.document()))
            session.commit()
        with Session(engine) as session:
            stored = session.get(StudentVersion, "v" * 32)
            assert stored is not None
            assert read_evaluation(stored) == written
            assert stored.evaluation == written.document()
    finally:
        engine.dispose()
