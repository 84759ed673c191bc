"""A student version's evaluation, as kept in its ``evaluation`` JSON column.

The distiller writes it once per version (held-out figures, costs, what the version was
trained on, which held-out inputs it got right) and adds the tournament's figures; routing,
the difficulty gate, the admin API, the CLI and the demo read it. Every field is optional
and unknown keys are kept, so that what any release wrote still reads, and writes back
with the keys it had.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.agreement import Shape
from core.tables import StudentVersion


class _Document(BaseModel):
    model_config = ConfigDict(extra="allow")


class TrainingProfile(_Document):
    """What a version was trained on; requests outside it go to the teacher."""

    models: list[str] | None = None
    response_formats: list[str] | None = None
    tools: bool | None = None
    max_prompt_chars: int | None = None

    def rules(self) -> dict[str, Any]:
        """The profile as routing's eligibility check reads it (a key absent: no rule)."""
        return self.model_dump(exclude_none=True)


class TournamentEntrant(_Document):
    number: int
    kind: str
    share_at_target: float
    agreement: float | None = None
    training_seconds: float | None = None
    latency_p50_ms: float | None = None


class TournamentFigures(_Document):
    """The tournament between the student kinds trained in one run."""

    entrants: list[TournamentEntrant] = Field(default_factory=list)
    winner: int
    failed: dict[str, str] = Field(default_factory=dict, description="kind: why it failed")


class VersionEvaluation(_Document):
    """Held-out evaluation and costs of one student version."""

    metric: Shape | None = None
    examples: int | None = Field(default=None, description="held-out examples evaluated")
    agreement: float | None = None
    base_agreement: float | None = Field(default=None, description="the floor: no adapter")
    mean_score: float | None = None
    target: float | None = Field(default=None, description="agreement calibrated for")
    share_at_target: float | None = None
    threshold: float | None = Field(default=None, description="calibrated confidence")
    retained_share: float | None = None
    retained_agreement: float | None = None
    calibration_pairs: int | None = Field(
        default=None, description="predictions the threshold was chosen on"
    )
    calibration_out_of_fold: int | None = Field(
        default=None, description="of which out-of-fold predictions of training pairs"
    )
    calibration_lower_bound: float | None = Field(
        default=None,
        description="one-sided 95% Clopper-Pearson lower bound on the retained agreement",
    )
    training_seconds: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    profile: TrainingProfile | None = None
    heldout: list[tuple[str, bool]] = Field(
        default_factory=list,
        description="(exchange id, agreed) per held-out input: the difficulty gate's seed",
    )
    tournament: TournamentFigures | None = None

    def document(self) -> dict[str, Any]:
        """The JSON to store: the keys that were set (or read), unknown ones included."""
        return self.model_dump(mode="json", exclude_unset=True)


def read_evaluation(version: StudentVersion) -> VersionEvaluation:
    """``version``'s evaluation (empty for a version that has none)."""
    return VersionEvaluation.model_validate(version.evaluation or {})
