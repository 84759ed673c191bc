"""Distillation on CLINC150: what each kind of student learns, how fast, at what cost.

A fake teacher answers each utterance with its gold intent (the bundled 20 banking intents
of CLINC150). The pairs go through the product's own curation, then each student kind is
trained and evaluated on the same held-out split, and the figures are printed side by side:

- ``classifier``: the bundled MiniLM embeds each utterance, a calibrated linear head is
  fitted on the training split (seconds);
- ``lora``: LoRA training on the bundled SmolLM2-135M-Instruct (minutes), and the base
  model without adapter as the floor;
- for both: training time, held-out agreement, the calibrated confidence threshold for the
  target agreement and the share it retains, per-request latency (p50/p99: embedding and
  head, or greedy generation), artefact size.

Run: ``.venv/bin/python bench/distill.py`` (about 20 minutes on 2 cores for 1,500 pairs);
``--kinds classifier`` for the classifier alone (seconds); ``--quick`` for a few minutes'
smoke run on 4 intents.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.classifier import BUNDLED_ENCODER
from core.embedding import Encoder
from core.tables import Exchange
from distiller.base_model import resolve_base_model
from distiller.candidates import Judging, classifier_candidate
from distiller.curation import CuratedSet, CurationConfig, curate
from distiller.datasets import clinc150_banking20
from distiller.evaluation import StudentAnswer, evaluate
from distiller.inference import StudentModel
from distiller.training import LoraTrainingConfig, TrainingExample, train_lora


def teacher_exchanges(intents: int, per_intent: int, seed: int = 0) -> list[Exchange]:
    data = clinc150_banking20()
    chosen = data["intents"][:intents]
    system = (
        "You route banking support messages. Answer with exactly one intent name from: "
        + ", ".join(chosen)
        + "."
    )
    rows = [row for row in data["train"] + data["val"] if row[1] in chosen]
    random.Random(seed).shuffle(rows)
    taken: dict[str, int] = {}
    exchanges: list[Exchange] = []
    for text, intent in rows:
        if taken.get(intent, 0) >= per_intent:
            continue
        taken[intent] = taken.get(intent, 0) + 1
        message = {"role": "assistant", "content": intent}
        exchanges.append(
            Exchange(
                id=f"{len(exchanges):032x}",
                task="banking",
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
                response={"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]},
                latency_ms=0.0,
            )
        )
    return exchanges


def directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    ranked = sorted(seconds)
    return (
        round(1000 * statistics.median(ranked), 2),
        round(1000 * ranked[int(0.99 * (len(ranked) - 1))], 2),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="stillroom-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    encoder = Encoder()
    exchanges = teacher_exchanges(args.intents, args.per_intent)
    started = time.perf_counter()
    curated = curate(exchanges, CurationConfig(), embed=encoder.encode)
    curation_seconds = time.perf_counter() - started
    print(
        f"curated {len(exchanges)} pairs in {curation_seconds:.1f}s: {len(curated.train)} "
        f"train, {len(curated.heldout)} held out, excluded {dict(curated.excluded)}",
        flush=True,
    )
    figures: dict[str, Any] = {
        "common": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
            "intents": args.intents,
            "pairs": len(exchanges),
            "train": len(curated.train),
            "heldout": len(curated.heldout),
            "target": args.target,
        }
    }
    if "classifier" in args.kinds:
        figures["classifier"] = run_classifier(args, curated, encoder, work)
    if "lora" in args.kinds:
        figures["lora"] = run_lora(args, curated, work)
    figures["common"]["peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0
    )
    return figures


def run_classifier(
    args: argparse.Namespace, curated: CuratedSet, encoder: Encoder, work: Path
) -> dict[str, Any]:
    print("classifier: embedding and fitting the head", flush=True)
    candidate = classifier_candidate(
        curated=curated,
        name="banking",
        output_path=work / "head.npz",
        encoder=encoder,
        encoder_name=BUNDLED_ENCODER,
        judging=Judging(target=args.target),
    )
    evaluation = candidate.evaluation
    known = [
        {"messages": e.messages, "teacher": e.answer, **detail}
        for e, detail in zip(curated.heldout, evaluation.details, strict=True)
    ]
    (work / "heldout-classifier.json").write_text(json.dumps(known))
    p50, p99 = percentiles_ms(candidate.latencies)
    return {
        "model": "all-MiniLM-L6-v2 + linear head",
        "training_seconds": round(candidate.training_seconds, 2),
        "student_agreement": round(evaluation.agreement, 4),
        "base_agreement": round(evaluation.base_agreement or 0.0, 4),
        "threshold": evaluation.calibration.threshold,
        "share_at_target": round(evaluation.share_at_target, 4),
        "agreement_on_share": round(evaluation.calibration.retained_agreement, 4),
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "artefact_kb": round((work / "head.npz").stat().st_size / 1e3, 1),
    }


def run_lora(args: argparse.Namespace, curated: CuratedSet, work: Path) -> dict[str, Any]:
    base = resolve_base_model(None, Path(args.data_dir))
    config = LoraTrainingConfig(epochs=args.epochs)
    last_print = 0.0

    def progress(p: Any) -> None:
        nonlocal last_print
        if time.monotonic() - last_print > 30 or p.step == p.total_steps:
            last_print = time.monotonic()
            print(
                f"  step {p.step}/{p.total_steps} loss {p.loss:.3f} eta {p.eta_seconds:.0f}s",
                flush=True,
            )

    print("lora: training the adapter", flush=True)
    result = train_lora(
        base_model=base,
        examples=[TrainingExample(e.messages, e.answer) for e in curated.train],
        config=config,
        output_dir=work / "adapter",
        on_progress=progress,
    )
    model = StudentModel(base)
    model.load_adapter("banking", str(result.adapter_dir))
    latencies: list[float] = []

    def answer(adapter: str | None) -> Any:
        def respond(example: Any) -> StudentAnswer:
            began = time.perf_counter()
            generation = model.generate(example.messages, adapter=adapter, max_new_tokens=12)
            if adapter is not None:
                latencies.append(time.perf_counter() - began)
            return StudentAnswer(generation.text, generation.mean_logprob)

        return respond

    started = time.perf_counter()
    evaluation = evaluate(
        curated.heldout,
        shape=curated.shape,
        student=answer("banking"),
        base=answer(None),
        target=args.target,
    )
    evaluation_seconds = time.perf_counter() - started
    # What bench/router.py builds its difficulty index from: held-out inputs and results.
    known = [
        {"messages": e.messages, "teacher": e.answer, **detail}
        for e, detail in zip(curated.heldout, evaluation.details, strict=True)
    ]
    (work / "heldout.json").write_text(json.dumps(known))
    p50, p99 = percentiles_ms(latencies)
    return {
        "model": "SmolLM2-135M-Instruct (bundled) + LoRA",
        "epochs": args.epochs,
        "training_seconds": round(result.seconds, 1),
        "examples_per_second": round(result.examples_per_second, 2),
        "final_loss": round(result.final_loss, 4),
        "student_agreement": round(evaluation.agreement, 4),
        "base_agreement": round(evaluation.base_agreement or 0.0, 4),
        "threshold": evaluation.calibration.threshold,
        "share_at_target": round(evaluation.share_at_target, 4),
        "agreement_on_share": round(evaluation.calibration.retained_agreement, 4),
        "evaluation_seconds": round(evaluation_seconds, 1),
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "artefact_kb": round(directory_size(result.adapter_dir) / 1e3, 1),
    }


def aims(figures: dict[str, Any]) -> list[tuple[str, bool]]:
    target = figures["common"]["target"]
    checks = []
    if "classifier" in figures:
        c = figures["classifier"]
        checks += [
            (f"classifier: share at {target} >= 0.90", c["share_at_target"] >= 0.90),
            ("classifier: p50 per request <= 15 ms", c["latency_p50_ms"] <= 15),
            (
                f"classifier: agreement on retained share >= {target}",
                c["agreement_on_share"] >= target and c["share_at_target"] > 0,
            ),
        ]
    if "lora" in figures:
        lora = figures["lora"]
        checks += [
            ("lora: held-out agreement >= 0.90", lora["student_agreement"] >= 0.90),
            ("lora: training <= 15 min", lora["training_seconds"] <= 900),
            (
                f"lora: agreement on retained share >= {target}",
                lora["agreement_on_share"] >= target and lora["share_at_target"] > 0,
            ),
        ]
    return checks


def report(figures: dict[str, Any]) -> str:
    lines = [f"  {key:<22} {value}" for key, value in figures["common"].items()]
    kinds = [kind for kind in ("classifier", "lora") if kind in figures]
    rows = list(dict.fromkeys(key for kind in kinds for key in figures[kind]))
    lines.append("")
    lines.append(f"  {'':<22}" + "".join(f"{kind:>42}" for kind in kinds))
    for row in rows:
        values = "".join(f"{_shown(figures[kind].get(row)):>42}" for kind in kinds)
        lines.append(f"  {row:<22}{values}")
    lines.append("")
    lines += [f"  [{'met' if ok else 'MISSED':<6}] {name}" for name, ok in aims(figures)]
    return "\n".join(lines)


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def extraction_figures(args: argparse.Namespace) -> None:
    """The extraction task (bench/extraction.py): the extractor's distillation figures."""
    spec = importlib.util.spec_from_file_location(
        "extraction", Path(__file__).with_name("extraction.py")
    )
    assert spec is not None
    assert spec.loader is not None
    extraction = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extraction)
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="stillroom-bench-"))
    curated, candidate = extraction.distill(90, args.target, work)
    figures = extraction.distillation_figures(curated, candidate)
    print("\ndistillation on SNIPS (fake teacher answering the gold JSON), extractor")
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 intents, 40 pairs each, 1 epoch")
    parser.add_argument(
        "--kinds",
        default="classifier,lora",
        type=lambda text: [k.strip() for k in text.split(",") if k.strip()],
        help="student kinds to train, comma-separated: classifier, lora",
    )
    parser.add_argument("--intents", type=int, default=20)
    parser.add_argument("--per-intent", type=int, default=75)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--data-dir", default="stillroom-data", help="where the base model is")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--out", help="keep the students and held-out results here (for bench/router.py)"
    )
    parser.add_argument(
        "--task",
        default="intents",
        choices=["intents", "extraction"],
        help="intents (CLINC150, the default) or extraction (SNIPS, 90 pairs per intent, "
        "the extractor: bench/extraction.py)",
    )
    args = parser.parse_args()
    if args.task == "extraction":
        extraction_figures(args)
        return
    if args.quick:
        args.intents, args.per_intent, args.epochs = 4, 40, 1
    figures = run(args)
    print("\ndistillation on CLINC150 (fake teacher answering the gold intent)")
    print(report(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
