"""One training run, end to end: curate → train → evaluate → register → gate → publish.

A label-like task gets a candidate of each enabled student kind (a classifier head in
seconds, a LoRA adapter in minutes), and so does an extractor-shaped JSON task (an
extractor in about a minute, a LoRA adapter), evaluated on the same held-out split; the
tournament picks the one to put to the publish gate (see ``distiller.tournament``). It is
progressive: the kinds train fastest first, and one that passes the gate is published as
soon as it is evaluated, so the task is served while slower kinds train; a slower one
replaces it only by serving a larger share at the target. Other tasks get a LoRA adapter.
A run that fails at any step is marked failed with its error; a version that fails or
loses never replaces the live one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from core.agreement import ShapeRules
from core.classifier import encoder_id
from core.embedding import Encoder, default_embedding_model
from core.evaluation import TrainingProfile
from core.metrics import Metrics
from core.profile import training_profile
from core.settings import Settings
from core.store import list_exchanges
from core.tables import Exchange, StudentHead, StudentVersion, Task, TrainingRun
from core.task_policy import TaskPolicy, effective_policy
from core.tool_profile import tool_profile
from distiller import registry, tournament
from distiller.backends import StudentReplicas
from distiller.base_model import resolve_base_model
from distiller.candidates import (
    Candidate,
    Judging,
    classifier_candidate,
    extractor_candidate,
    lora_candidate,
)
from distiller.curation import CuratedSet, CurationConfig, Example, curate
from distiller.training import LoraTrainingConfig, TrainingProgress

log = logging.getLogger("stillroom.distiller")

_PROGRESS_EVERY = 1.0  # seconds between progress writes to the store


class NotEnoughData(Exception):
    """The task has too few curated pairs to train and evaluate a student."""


class NoStudentKind(NotEnoughData):
    """No enabled student kind serves a task of this shape."""


def kinds_for(shape: str, enabled: Sequence[str], *, extractor_shaped: bool = False) -> list[str]:
    """The student kinds to train for a task of ``shape``, cheapest first: a classifier
    only for label-like tasks, an extractor only for extractor-shaped JSON tasks."""
    fits = {"classifier": shape == "label", "extractor": extractor_shaped, "lora": True}
    return [k for k in ("classifier", "extractor", "lora") if k in enabled and fits[k]]


@dataclass
class Pipeline:
    """Everything a training run needs, built once per distiller process."""

    settings: Settings
    engine: Engine
    backend: StudentReplicas
    encoder: Encoder
    metrics: Metrics = field(default_factory=Metrics)

    def curation_config(self) -> CurationConfig:
        s = self.settings
        return CurationConfig(
            heldout_percent=s.heldout_percent,
            near_duplicate_threshold=s.near_duplicate_threshold,
            scrub_pii=s.scrub_pii,
            label_cap=s.label_cap,
            shape_rules=ShapeRules(
                max_labels=s.label_max_distinct,
                min_count=s.label_min_count,
                max_chars=s.label_max_chars,
            ),
        )

    def lora_config(self) -> LoraTrainingConfig:
        s = self.settings
        return LoraTrainingConfig(
            r=s.lora_rank,
            alpha=2 * s.lora_rank,
            learning_rate=s.lora_learning_rate,
            epochs=s.lora_epochs,
        )

    def exchanges(self, task: str) -> list[Exchange]:
        with Session(self.engine) as session:
            return list(list_exchanges(session=session, task=task))

    def policy(self, task: str) -> TaskPolicy:
        """The task's effective policy, read once per run: the version is calibrated for,
        and gated on, the same target."""
        with Session(self.engine) as session:
            return effective_policy(session.get(Task, task), self.settings)

    async def run(self, run: TrainingRun) -> StudentVersion | None:
        """Carry out a claimed run; record its outcome on the run row and in the metrics."""
        started = time.monotonic()
        self.metrics.prepare_task(run.task)
        try:
            version = await self._run(run)
        except Exception as exc:
            self._count(run.task, "failed", started)
            log.warning("training run %s for %s failed: %s", run.id, run.task, exc)
            detail = str(exc) if isinstance(exc, NotEnoughData) else _describe(exc)
            registry.update_run(
                engine=self.engine,
                run_id=run.id,
                state="failed",
                error=detail,
                finished_at=registry.now(),
                phase=None,
            )
            return None
        registry.update_run(
            engine=self.engine,
            run_id=run.id,
            state="succeeded",
            phase=None,
            version_id=version.id,
            finished_at=registry.now(),
        )
        self._count(run.task, "published" if version.state == "published" else "rejected", started)
        return version

    def _count(self, task: str, outcome: str, started: float) -> None:
        self.metrics.training_runs.labels(task=task, outcome=outcome).inc()
        self.metrics.training_run_seconds.labels(task=task, outcome=outcome).observe(
            time.monotonic() - started
        )

    async def _run(self, run: TrainingRun) -> StudentVersion:
        update = self._updater(run.id)
        update(phase="curating")
        exchanges = await asyncio.to_thread(self.exchanges, run.task)
        curated = await asyncio.to_thread(
            curate, exchanges, self.curation_config(), embed=self.encoder.encode
        )
        update(curation=curated.summary())
        await asyncio.to_thread(self._record_shape, run.task, curated)
        self._check_enough(run.task, curated)
        kinds = self._kinds(run.task, curated)
        policy = await asyncio.to_thread(self.policy, run.task)

        trained = {e.exchange_id for e in curated.train}
        requests = [e.request for e in exchanges if e.id in trained]
        profile = TrainingProfile.model_validate(
            {**training_profile(requests), **tool_profile(requests)}
        )
        with Session(self.engine) as session:
            first = registry.next_version_number(session=session, task=run.task)
        versions: list[StudentVersion] = []
        failures: dict[str, str] = {}
        early: StudentVersion | None = None  # published before the run's last kind trained
        probe = curated.heldout[0]
        for number, kind in enumerate(kinds, start=first):
            try:
                candidate = await self._train(kind, run, number, curated, policy)
            except Exception as exc:
                if len(kinds) == 1:
                    raise
                log.warning("training the %s student of %s failed: %s", kind, run.task, exc)
                failures[kind] = _describe(exc)
                continue
            version = self._register(run, number, candidate, profile)
            if number < first + len(kinds) - 1:  # slower challengers still to train
                version = await self._publish_early(version, early, probe, policy)
                if version.state == "published":
                    early = version
                    update(version_id=version.id)
            versions.append(version)
        if not versions:
            raise RuntimeError("; ".join(f"{k}: {why}" for k, why in failures.items()))
        update(phase="publishing")
        winner = self._tournament(versions, failures, policy, serving=early)
        update(version_id=winner.id)
        if early is not None and winner.id == early.id:
            return early
        gated = await self._gate(winner, probe, policy)
        if gated.state != "published" and early is not None:
            update(version_id=early.id)  # the challenger failed its gate: the first serves on
            return early
        return gated

    async def _publish_early(
        self,
        version: StudentVersion,
        serving: StudentVersion | None,
        probe: Example,
        policy: TaskPolicy,
    ) -> StudentVersion:
        """Publish ``version`` at once if it passes the gate and serves more at the target
        than what this run published before it: a fast kind serves while slower ones
        train, and a slower one replaces it only by serving a larger share. A version that
        does not qualify is left a candidate, for the tournament at the end of the run."""
        if serving is not None and tournament.share_at_target(
            version
        ) <= tournament.share_at_target(serving):
            return version
        with Session(self.engine) as session:
            live = registry.active_version(session=session, task=version.task)
            if live is not None:
                session.expunge(live)
        if registry.gate_verdict(version, live, policy) is not None:
            return version
        published = await registry.publish(
            engine=self.engine, backend=self.backend, version=version, probe_messages=probe.messages
        )
        if published.state == "published":
            self.metrics.versions_published.labels(task=version.task, kind=version.kind).inc()
            log.info(
                "published v%d (%s) of %s while slower students train",
                published.number,
                published.kind,
                published.task,
            )
        return published

    def _kinds(self, task: str, curated: CuratedSet) -> list[str]:
        kinds = kinds_for(
            curated.shape, self.settings.student_kinds, extractor_shaped=curated.extractor_shaped
        )
        if not kinds:
            why = ""
            if curated.fields is not None and curated.fields.reason:
                why = f" (not extractor-shaped: {curated.fields.reason})"
            raise NoStudentKind(
                f"task {task!r} has {curated.shape}-shaped teacher answers{why}; the classifier "
                f"student serves label-like tasks only, the extractor extractor-shaped JSON "
                f"tasks only, and STILLROOM_STUDENT_KINDS="
                f"{','.join(self.settings.student_kinds)} leaves out lora"
            )
        return kinds

    async def _train(
        self, kind: str, run: TrainingRun, number: int, curated: CuratedSet, policy: TaskPolicy
    ) -> Candidate:
        name = f"{run.task}-v{number}"
        folder = self.settings.data_dir / "adapters" / run.task / f"v{number}"
        judging = Judging(
            target=policy.target_agreement,
            similarity=self.encoder.similarity,
            text_threshold=self.settings.text_similarity_threshold,
        )
        update = self._updater(run.id)
        if kind == "classifier":
            update(phase="training classifier")
            return await asyncio.to_thread(
                classifier_candidate,
                curated=curated,
                name=name,
                output_path=folder / "head.npz",
                encoder=self.encoder,
                encoder_name=encoder_id(self.settings.embedding_model),
                judging=judging,
            )
        if kind == "extractor":
            update(phase="training extractor")
            return await asyncio.to_thread(
                extractor_candidate,
                curated=curated,
                name=name,
                output_path=folder / "extractor.bin",
                encoder_path=self.settings.embedding_model or default_embedding_model(),
                encoder_name=encoder_id(self.settings.embedding_model),
                judging=judging,
                on_progress=self._on_progress(run.id),
            )
        base = await asyncio.to_thread(
            resolve_base_model, self.settings.base_model, self.settings.data_dir
        )
        update(phase="training")

        def trained(steps: int) -> None:
            update(phase="evaluating", step=steps, total_steps=steps, eta_seconds=0.0)

        return await asyncio.to_thread(
            lora_candidate,
            base_model=base,
            curated=curated,
            name=name,
            output_dir=folder,
            config=self.lora_config(),
            judging=judging,
            on_progress=self._on_progress(run.id),
            on_trained=trained,
        )

    def _tournament(
        self,
        versions: list[StudentVersion],
        failures: dict[str, str],
        policy: TaskPolicy,
        *,
        serving: StudentVersion | None = None,
    ) -> StudentVersion:
        """The version to put to the gate; the others are rejected with why, except the
        one this run already published (``serving``): it serves until the winner does, and
        is retired then. Versions that failed to load when published early are out."""
        contenders = [v for v in versions if v.state != "rejected"] or versions
        winner = tournament.winner(contenders)
        for version in versions:
            if version is not winner and version is not serving and version.state != "rejected":
                reason = tournament.loss_reason(version, winner, policy.target_agreement)
                registry.reject(engine=self.engine, version=version, reason=reason)
        if len(versions) + len(failures) > 1:
            registry.note_tournament(
                engine=self.engine,
                versions=versions,
                figures=tournament.figures(versions, winner, failures),
            )
        return winner

    def _record_shape(self, task: str, curated: CuratedSet) -> None:
        with Session(self.engine) as session, session.begin():
            row = session.get(Task, task)
            if row is not None:
                row.shape = curated.shape
                row.label_count = len(curated.labels) if curated.shape == "label" else None
                row.field_kinds = curated.fields.document() if curated.fields else None

    def _check_enough(self, task: str, curated: CuratedSet) -> None:
        needed = self.settings.train_min_pairs
        if len(curated.train) < needed or len(curated.heldout) < 5:
            excluded = ", ".join(f"{n} {why}" for why, n in curated.excluded.items()) or "none"
            raise NotEnoughData(
                f"task {task!r} has {len(curated.train)} curated training pairs and "
                f"{len(curated.heldout)} held out; training needs at least {needed} and 5 "
                f"(excluded: {excluded})"
            )

    def _register(
        self, run: TrainingRun, number: int, candidate: Candidate, profile: TrainingProfile
    ) -> StudentVersion:
        evaluation = candidate.evaluation
        calibration = evaluation.calibration
        version = StudentVersion(
            id=registry.new_id(),
            task=run.task,
            number=number,
            kind=candidate.kind,
            base_model=candidate.base_model,
            adapter_name=candidate.adapter_name,
            adapter_path=str(candidate.adapter_path.resolve()),
            training_run_id=run.id,
            metric=evaluation.metric,
            agreement=evaluation.agreement,
            base_agreement=evaluation.base_agreement,
            confidence_threshold=calibration.threshold,
            retained_share=calibration.retained_share,
            retained_agreement=calibration.retained_agreement,
            evaluation=candidate.version_evaluation(profile).document(),
        )
        with Session(self.engine) as session, session.begin():
            session.add(version)
            stored = candidate.student_head
            if stored is not None:
                session.add(StudentHead(version_id=version.id, data=stored))
            session.flush()
            session.expunge(version)
        return version

    async def _gate(
        self, version: StudentVersion, probe: Example, policy: TaskPolicy
    ) -> StudentVersion:
        with Session(self.engine) as session:
            live = registry.active_version(session=session, task=version.task)
            if live is not None:
                session.expunge(live)
        reason = registry.gate_verdict(version, live, policy)
        if reason is not None:
            return registry.reject(engine=self.engine, version=version, reason=reason)
        published = await registry.publish(
            engine=self.engine,
            backend=self.backend,
            version=version,
            probe_messages=probe.messages,
        )
        if published.state == "published":
            self.metrics.versions_published.labels(task=version.task, kind=version.kind).inc()
        return published

    def _updater(self, run_id: str) -> Callable[..., None]:
        def update(**values: Any) -> None:
            registry.update_run(engine=self.engine, run_id=run_id, **values)

        return update

    def _on_progress(self, run_id: str) -> Callable[[TrainingProgress], None]:
        last = 0.0

        def report(progress: TrainingProgress) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < _PROGRESS_EVERY and progress.step < progress.total_steps:
                return
            last = now
            registry.update_run(
                engine=self.engine,
                run_id=run_id,
                step=progress.step,
                total_steps=progress.total_steps,
                loss=progress.loss,
                eta_seconds=progress.eta_seconds,
            )

        return report


def _describe(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip()
