"""One training run, end to end: curate → train → evaluate → register → gate → publish.

A run that fails at any step is marked failed with its error; the live version of the
task is never touched by a failed or rejected run.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from core.embedding import Encoder
from core.profile import training_profile
from core.settings import Settings
from core.store import list_exchanges
from core.tables import Exchange, StudentVersion, TrainingRun
from distiller import registry
from distiller.backends import StudentBackend
from distiller.base_model import resolve_base_model
from distiller.curation import CuratedSet, CurationConfig, Example, curate
from distiller.evaluation import Evaluation, StudentAnswer, evaluate
from distiller.inference import StudentModel
from distiller.training import (
    LoraTrainingConfig,
    TrainingExample,
    TrainingProgress,
    train_lora,
)

log = logging.getLogger("stillroom.distiller")

_PROGRESS_EVERY = 1.0  # seconds between progress writes to the store


class NotEnoughData(Exception):
    """The task has too few curated pairs to train and evaluate a student."""


@dataclass
class Pipeline:
    """Everything a training run needs, built once per distiller process."""

    settings: Settings
    engine: Engine
    backend: StudentBackend
    encoder: Encoder

    def curation_config(self) -> CurationConfig:
        s = self.settings
        return CurationConfig(
            heldout_percent=s.heldout_percent,
            near_duplicate_threshold=s.near_duplicate_threshold,
            scrub_pii=s.scrub_pii,
            label_cap=s.label_cap,
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

    async def run(self, run: TrainingRun) -> StudentVersion | None:
        """Carry out a claimed run; record its outcome on the run row."""
        try:
            version = await self._run(run)
        except Exception as exc:
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
        return version

    async def _run(self, run: TrainingRun) -> StudentVersion:
        update = self._updater(run.id)
        update(phase="curating")
        exchanges = await asyncio.to_thread(self.exchanges, run.task)
        curated = await asyncio.to_thread(
            curate, exchanges, self.curation_config(), embed=self.encoder.encode
        )
        update(curation=curated.summary())
        self._check_enough(run.task, curated)

        base = await asyncio.to_thread(
            resolve_base_model, self.settings.base_model, self.settings.data_dir
        )
        with Session(self.engine) as session:
            number = registry.next_version_number(session=session, task=run.task)
        adapter_dir = self.settings.data_dir / "adapters" / run.task / f"v{number}"
        update(phase="training")
        result = await asyncio.to_thread(
            train_lora,
            base_model=base,
            examples=[TrainingExample(e.messages, e.answer) for e in curated.train],
            config=self.lora_config(),
            output_dir=adapter_dir,
            on_progress=self._on_progress(run.id),
        )
        update(phase="evaluating", step=result.steps, total_steps=result.steps, eta_seconds=0.0)
        adapter_name = f"{run.task}-v{number}"
        evaluation = await asyncio.to_thread(
            self._evaluate, base, adapter_name, result.adapter_dir, curated
        )
        trained = {e.exchange_id for e in curated.train}
        profile = training_profile(e.request for e in exchanges if e.id in trained)
        version = self._register(
            run, number, base, adapter_name, result.adapter_dir, evaluation, profile
        )
        update(phase="publishing", version_id=version.id)
        return await self._gate(version, curated.heldout[0])

    def _check_enough(self, task: str, curated: CuratedSet) -> None:
        needed = self.settings.train_min_pairs
        if len(curated.train) < needed or len(curated.heldout) < 5:
            excluded = ", ".join(f"{n} {why}" for why, n in curated.excluded.items()) or "none"
            raise NotEnoughData(
                f"task {task!r} has {len(curated.train)} curated training pairs and "
                f"{len(curated.heldout)} held out; training needs at least {needed} and 5 "
                f"(excluded: {excluded})"
            )

    def _evaluate(
        self, base: str, adapter_name: str, adapter_dir: Path, curated: CuratedSet
    ) -> Evaluation:
        model = StudentModel(base)
        model.load_adapter(adapter_name, str(adapter_dir))
        budget = _answer_budget(model, curated)

        def answer(adapter: str | None) -> Callable[[Example], StudentAnswer]:
            def respond(example: Example) -> StudentAnswer:
                generation = model.generate(
                    example.messages, adapter=adapter, max_new_tokens=budget
                )
                return StudentAnswer(generation.text, generation.mean_logprob)

            return respond

        return evaluate(
            curated.heldout,
            shape=curated.shape,
            student=answer(adapter_name),
            base=answer(None),
            target=self.settings.target_agreement,
            similarity=self.encoder.similarity,
            text_threshold=self.settings.text_similarity_threshold,
        )

    def _register(
        self,
        run: TrainingRun,
        number: int,
        base: str,
        adapter_name: str,
        adapter_dir: Path,
        evaluation: Evaluation,
        profile: dict[str, Any],
    ) -> StudentVersion:
        calibration = evaluation.calibration
        version = StudentVersion(
            id=registry.new_id(),
            task=run.task,
            number=number,
            kind="lora",
            base_model=base,
            adapter_name=adapter_name,
            adapter_path=str(adapter_dir.resolve()),
            training_run_id=run.id,
            metric=evaluation.metric,
            agreement=evaluation.agreement,
            base_agreement=evaluation.base_agreement,
            confidence_threshold=calibration.threshold,
            retained_share=calibration.retained_share,
            retained_agreement=calibration.retained_agreement,
            evaluation={
                **evaluation.summary(),
                "profile": profile,
                # Which held-out inputs the student got right: the difficulty gate's seed.
                "heldout": [[d["exchange_id"], d["agrees"]] for d in evaluation.details],
            },
        )
        with Session(self.engine) as session, session.begin():
            session.add(version)
            session.flush()
            session.expunge(version)
        return version

    async def _gate(self, version: StudentVersion, probe: Example) -> StudentVersion:
        gate = registry.Gate(
            target_agreement=self.settings.target_agreement,
            min_share=self.settings.publish_min_share,
        )
        with Session(self.engine) as session:
            live = registry.active_version(session=session, task=version.task)
            if live is not None:
                session.expunge(live)
        reason = registry.gate_verdict(version, live, gate)
        if reason is not None:
            return registry.reject(engine=self.engine, version=version, reason=reason)
        return await registry.publish(
            engine=self.engine,
            backend=self.backend,
            version=version,
            probe_messages=probe.messages,
        )

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


def _answer_budget(model: StudentModel, curated: CuratedSet) -> int:
    """Enough new tokens for the longest teacher answer, and a little more."""
    longest = max(len(model.tokenizer.encode(e.answer)) for e in curated.train + curated.heldout)
    return min(512, longest + 8)


def _describe(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip()
