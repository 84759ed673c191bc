"""The error budget on CLINC150: what the threshold controller makes of a classifier
student on new traffic, and what it does when the student gets worse mid-run.

A classifier is trained with the product's own curation and candidate code on 75 teacher
(gold-intent) pairs of each of the 20 banking intents, and calibrated with its guarantee
(held-out split and out-of-fold predictions, one-sided 95% Clopper-Pearson bound). New
traffic is everything CLINC150 has of those intents that it did not train on (the rest of
``train`` and ``val``, all of ``test``: 1,500 utterances) plus its 100 out-of-scope ones,
shuffled. Each request goes through the real store: the task is live at 100% on a version
with the calibrated threshold; routing reads the threshold through
``router.policy.load_policies`` (the function the proxy reads it with); a served answer is
audited (``--audit-percent``, 100 by default so that CLINC150's 1,600 new utterances give
the controller its evidence: at the product's 5% the same evidence needs 20 times the
traffic) and stored as a ``shadow_results`` row; every ``--round`` requests the real
controller (``router.threshold_control.steer``) runs, then the drift check's agreement rule
(``router.gates.served_agreement`` over the latest ``drift_window`` scored pairs against
the drift floor), in the order the distiller runs them. A drift step-down takes the task to
shadow: the student serves nothing more.

Two runs: a steady one, and one whose student gets worse at the middle of the traffic (its
head's weights get Gaussian noise of ``--degrade`` times their spread: more wrong answers,
most of them, not all, less confident; inputs stay as familiar as they were).

Figures: share of in-scope traffic served and realised agreement (with its 95% interval)
before the controller moved and after it has seen ``--audits`` audits; the
threshold's moves; in the degraded run, when the controller tightened and when drift would
have stepped down, and the windows of 200 served answers below the target by more than
their interval.

Run: ``.venv/bin/python bench/error_budget.py`` (about a minute), or as part of
``bench/router.py --kinds budget``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlmodel import Session, select

from core.agreement import normalise_label
from core.classifier import BUNDLED_ENCODER, Head
from core.embedding import Encoder
from core.intervals import interval
from core.settings import Settings
from core.store import create_store_engine, create_tables
from core.tables import Exchange, ShadowResult, StudentVersion, Task, ThresholdMove
from distiller.candidates import Judging, classifier_candidate
from distiller.curation import CurationConfig, curate
from distiller.datasets import clinc150_banking20

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

TASK = "banking"
OUT_OF_SCOPE = "out_of_scope"
PER_INTENT = 75
WINDOW = 200


@dataclass(frozen=True)
class Request:
    text: str
    intent: str  # the teacher's answer
    vector: Any


@dataclass
class Served:
    at: int
    agrees: bool
    in_scope: bool


def split(seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(training pairs, new traffic): 75 per intent of train+val, and everything else."""
    data = clinc150_banking20()
    rows = [tuple(row) for row in data["train"] + data["val"]]
    random.Random(seed).shuffle(rows)
    taken: dict[str, int] = {}
    train, rest = [], []
    for text, intent in rows:
        if taken.get(intent, 0) < PER_INTENT:
            taken[intent] = taken.get(intent, 0) + 1
            train.append((text, intent))
        else:
            rest.append((text, intent))
    new = rest + [tuple(row) for row in data["test"]] + [(t, OUT_OF_SCOPE) for t in data["oos"]]
    random.Random(seed + 1).shuffle(new)
    return train, new


def exchanges(pairs: list[tuple[str, str]]) -> list[Exchange]:
    system = "You route banking support messages. Answer with the customer's intent."
    return [
        Exchange(
            id=f"{n:032x}",
            task=TASK,
            served_by="teacher",
            status="ok",
            http_status=200,
            request={
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": text},
                ],
            },
            response={
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": intent},
                        "finish_reason": "stop",
                    }
                ]
            },
            finish_reason="stop",
            latency_ms=1.0,
        )
        for n, (text, intent) in enumerate(pairs)
    ]


def train(encoder: Encoder, target: float, work: Path) -> tuple[Head, dict[str, Any]]:
    curated = curate(exchanges(split()[0]), CurationConfig(), embed=encoder.encode)
    candidate = classifier_candidate(
        curated=curated,
        name=f"{TASK}-v1",
        output_path=work / "head.npz",
        encoder=encoder,
        encoder_name=BUNDLED_ENCODER,
        judging=Judging(target=target),
    )
    calibration = candidate.evaluation.calibration
    if calibration.threshold is None or candidate.head is None:
        raise SystemExit("the classifier reached no threshold with the guarantee")
    return candidate.head, {
        "train": len(curated.train),
        "heldout": len(curated.heldout),
        "heldout_agreement": round(candidate.evaluation.agreement, 4),
        "calibration_pairs": calibration.pairs,
        "calibrated_threshold": round(calibration.threshold, 4),
        "calibrated_share": round(calibration.retained_share, 4),
        "calibrated_agreement": round(calibration.retained_agreement, 4),
        "calibrated_lower_bound": round(calibration.lower_bound, 4),
    }


def live_store(head: Head, threshold: float, work: Path) -> tuple[Engine, str]:
    engine = create_store_engine(f"sqlite:///{work / f'{uuid.uuid4().hex}.db'}")
    create_tables(engine)
    version = uuid.uuid4().hex
    with Session(engine) as session:
        session.add(Task(name=TASK, mode="live", cutover_percent=100.0, active_version_id=version))
        session.add(
            StudentVersion(
                id=version,
                task=TASK,
                number=1,
                kind="classifier",
                state="published",
                base_model=head.encoder,
                adapter_name=f"{TASK}-v1",
                adapter_path="-",
                metric="label",
                confidence_threshold=threshold,
            )
        )
        session.commit()
    return engine, version


def simulate(
    head: Head,
    threshold: float,
    traffic: list[Request],
    args: argparse.Namespace,
    work: Path,
    *,
    degrade_at: int | None = None,
) -> dict[str, Any]:
    # Imported here: run as a script, this file's folder came first on sys.path, and
    # bench/router.py shadows the router package until main() takes the folder off.
    from router.gates import confident, served_agreement
    from router.policy import load_policies
    from router.threshold_control import ControlRules, steer

    settings = Settings(target_agreement=args.target)
    rules = ControlRules()
    engine, version = live_store(head, threshold, work)
    worse = dataclasses.replace(
        head,
        weights=head.weights
        + np.random.default_rng(7)
        .normal(0.0, args.degrade * float(head.weights.std()), size=head.weights.shape)
        .astype(np.float32),
    )
    served: list[Served] = []
    scored: list[tuple[str, bool, float | None]] = []
    audits_seen: list[int] = []  # audits stored before each request
    in_scope = [r.intent != OUT_OF_SCOPE for r in traffic]
    first_move: int | None = None
    moves_at: list[tuple[int, str, float, float]] = []
    step_down: int | None = None
    pending: list[ShadowResult] = []
    current = threshold
    for at, request in enumerate(traffic):
        if at % args.round == 0:
            with Session(engine) as session:
                session.add_all(pending)
                session.commit()
            pending = []
            for move in steer(engine, settings, rules=rules):
                moves_at.append((at, move.direction, move.from_threshold, move.to_threshold))
                first_move = at if first_move is None else first_move
            policy = load_policies(engine, settings)[TASK]
            if policy.student is not None and policy.student.confidence_threshold is not None:
                current = policy.student.confidence_threshold
            agreement, pairs = served_agreement(scored[-settings.drift_window :], current)
            if (
                step_down is None
                and pairs >= settings.drift_min_samples
                and agreement is not None
                and agreement < settings.drift_agreement_floor
            ):
                step_down = at
        audits_seen.append(len(scored))
        student = worse if degrade_at is not None and at >= degrade_at else head
        prediction = student.predict(request.vector)
        confidence = prediction.logprob if prediction.familiar else -np.inf
        if step_down is not None or not confident(confidence, current):
            continue
        agrees = normalise_label(prediction.answer) == normalise_label(request.intent)
        served.append(Served(at, agrees, in_scope[at]))
        if random.Random(f"audit:{at}").random() * 100 < args.audit_percent:
            scored.append(("audit", agrees, float(confidence)))
            pending.append(
                ShadowResult(
                    id=uuid.uuid4().hex,
                    task=TASK,
                    version_id=version,
                    kind="audit",
                    agrees=agrees,
                    score=1.0 if agrees else 0.0,
                    confidence=float(confidence),
                    student_answer=prediction.answer,
                    teacher_answer=request.intent,
                )
            )
    with Session(engine) as session:
        logged = len(session.exec(select(ThresholdMove)).all())
    engine.dispose()
    after = next((n for n, seen in enumerate(audits_seen) if seen >= args.audits), len(traffic))
    end = degrade_at if degrade_at is not None else len(traffic)
    figures = {
        "before_controller": segment(served, in_scope, 0, first_move or end),
        f"after_{args.audits}_audits": segment(served, in_scope, after, end),
        "moves": [
            {"at": at, "direction": d, "from": round(a, 4), "to": round(b, 4)}
            for at, d, a, b in moves_at
        ],
        "moves_logged": logged,
        "final_threshold": round(current, 4),
    }
    if degrade_at is not None:
        tightened = [at for at, d, _, _ in moves_at if d == "tighten" and at >= degrade_at]
        figures.update(
            {
                "degraded_at": degrade_at,
                "first_tighten_after": tightened[0] if tightened else None,
                "drift_step_down_at": step_down,
                "after_degradation": segment(served, in_scope, degrade_at, len(traffic)),
                **windows(served, args.target),
            }
        )
    return figures


def segment(served: list[Served], in_scope: list[bool], start: int, end: int) -> dict[str, Any]:
    """Share of in-scope requests in [start, end) the student served, and the agreement
    (with its 95% interval) of all it served there."""
    mine = [s for s in served if start <= s.at < end]
    scope = sum(in_scope[start:end])
    spread = interval(sum(s.agrees for s in mine), len(mine))
    return {
        "requests": end - start,
        "share_of_in_scope": round(sum(s.in_scope for s in mine) / scope, 4) if scope else None,
        "served": len(mine),
        "agreement": round(spread.estimate, 4) if spread.estimate is not None else None,
        "interval": [round(spread.low, 4), round(spread.high, 4)],
    }


def windows(served: list[Served], target: float) -> dict[str, Any]:
    """Every window of ``WINDOW`` consecutive served answers (sliding by 10): the lowest
    agreement, and how many fall below the target by more than their 95% interval."""
    agreed = np.cumsum([0] + [s.agrees for s in served])
    lowest, outside = 1.0, 0
    starts = range(0, max(0, len(served) - WINDOW + 1), 10)
    for start in starts:
        k = int(agreed[start + WINDOW] - agreed[start])
        lowest = min(lowest, k / WINDOW)
        outside += interval(k, WINDOW).high < target
    return {
        "windows_of_200": len(starts),
        "lowest_window_agreement": round(lowest, 4),
        "windows_below_target_beyond_interval": outside,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="stillroom-budget-bench-"))
    encoder = Encoder()
    print("error budget: training and calibrating the classifier", flush=True)
    head, calibration = train(encoder, args.target, work)
    new = split()[1]
    vectors = encoder.encode([text for text, _ in new])
    traffic = [Request(t, i, v) for (t, i), v in zip(new, vectors, strict=True)]
    threshold = calibration["calibrated_threshold"]
    print(f"  {len(traffic)} new requests, steady run", flush=True)
    steady = simulate(head, threshold, traffic, args, work)
    print("  degraded run", flush=True)
    degraded = simulate(head, threshold, traffic, args, work, degrade_at=len(traffic) // 2)
    return {
        "target": args.target,
        "calibration": calibration,
        "steady": steady,
        "degraded": degraded,
    }


def parser() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_options(options)
    options.add_argument("--json", help="also write the figures to this file")
    return options


def add_options(options: argparse.ArgumentParser) -> None:
    options.add_argument("--audit-percent", type=float, default=100.0)
    options.add_argument("--audits", type=int, default=500, help="the 'after N audits' figure")
    options.add_argument("--round", type=int, default=20, help="requests per controller round")
    options.add_argument(
        "--degrade", type=float, default=2.0, help="degradation: weight noise, in weight spreads"
    )


def main() -> None:
    here = Path(__file__).parent.resolve()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    options = parser()
    options.add_argument("--target", type=float, default=0.95)
    args = options.parse_args()
    figures = run(args)
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
