"""The tournament between the student kinds trained on one task in one run.

All candidates were evaluated on the same held-out split. The winner serves the largest
share of held-out traffic at the target agreement (at its calibrated threshold); a tie goes
to the kind that is cheaper to serve. Only the winner goes on to the publish gate; the
others stay in the registry, rejected with the figures they lost on, so that an operator
can see the choice and publish one of them instead. A kind that trained first and passed
the gate may already serve (the pipeline publishes it at once); it is retired when the
winner is published, and serves on if the winner fails its gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from core.evaluation import TournamentEntrant, TournamentFigures, read_evaluation
from core.tables import StudentVersion

# Cheapest to serve first: a classifier answers inside the proxy in milliseconds, an
# extractor (a fine-tuned encoder's forward pass) there too in a few more.
SERVING_COST = {"classifier": 0, "extractor": 1, "lora": 2}


def share_at_target(version: StudentVersion) -> float:
    """Held-out share served at the target agreement (none without a threshold)."""
    if version.confidence_threshold is None:
        return 0.0
    return version.retained_share or 0.0


def winner(candidates: Sequence[StudentVersion]) -> StudentVersion:
    """The candidate with the largest share at target; ties go to the cheaper kind."""
    if not candidates:
        raise ValueError("a tournament needs at least one candidate")
    return max(
        candidates,
        key=lambda v: (share_at_target(v), -SERVING_COST.get(v.kind, len(SERVING_COST))),
    )


def loss_reason(loser: StudentVersion, winner: StudentVersion, target: float) -> str:
    """Why ``loser`` was not published, in figures."""
    mine, theirs = share_at_target(loser), share_at_target(winner)
    against = f"lost the tournament to v{winner.number} ({winner.kind})"
    if mine == theirs:
        return (
            f"{against}: both serve {mine:.0%} of held-out traffic at {target:.0%} "
            f"agreement, and {winner.kind} is cheaper to serve"
        )
    return f"{against}: {mine:.0%} vs {theirs:.0%} of held-out traffic at {target:.0%} agreement"


def figures(
    entrants: Sequence[StudentVersion], winner: StudentVersion, failed: Mapping[str, str]
) -> TournamentFigures:
    """What the tournament was decided on, kept on every version that took part."""
    rows = []
    for version in entrants:
        evaluation = read_evaluation(version)
        rows.append(
            TournamentEntrant(
                number=version.number,
                kind=version.kind,
                share_at_target=share_at_target(version),
                agreement=version.agreement,
                training_seconds=evaluation.training_seconds,
                latency_p50_ms=evaluation.latency_p50_ms,
            )
        )
    return TournamentFigures(entrants=rows, winner=winner.number, failed=dict(failed))
