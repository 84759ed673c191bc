"""The LoRA student on the extraction task (bench/extraction.py: SNIPS, the fake teacher
answering the gold JSON under ``response_format: json_object``), its answers decoded free
and held to JSON by the embedded student server's constrained decoding.

One adapter is trained (SmolLM2-135M-Instruct, the product's LoRA defaults but for
``--epochs``; ``--epochs 0``: the base model without one, the floor), then its held-out
answers are judged twice: decoded free, and with the
requests' ``response_format``. Figures for each: held-out exact agreement, field F1,
parse rate, share at the target exact agreement, p50/p99 per answer.

    .venv/bin/python bench/lora_structured.py --per-intent 90 --epochs 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from core.agreement import parse_json_object
from core.embedding import Encoder
from distiller.base_model import resolve_base_model
from distiller.curation import CuratedSet, CurationConfig, Example, curate
from distiller.evaluation import StudentAnswer, evaluate
from distiller.inference import StudentModel
from distiller.training import LoraTrainingConfig, TrainingExample, train_lora


def _extraction() -> Any:
    spec = importlib.util.spec_from_file_location(
        "extraction", Path(__file__).with_name("extraction.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def judged(
    model: StudentModel,
    adapter: str | None,
    curated: CuratedSet,
    *,
    response_format: dict[str, Any] | None,
    budget: int,
    target: float,
) -> dict[str, Any]:
    seconds: list[float] = []
    parsed: list[bool] = []

    def respond(example: Example) -> StudentAnswer:
        began = time.perf_counter()
        generation = model.generate(
            example.messages,
            adapter=adapter,
            max_new_tokens=budget,
            response_format=response_format,
        )
        seconds.append(time.perf_counter() - began)
        parsed.append(parse_json_object(generation.text) is not None)
        return StudentAnswer(generation.text, generation.mean_logprob)

    evaluation = evaluate(curated.heldout, shape=curated.shape, student=respond, target=target)
    ranked = sorted(seconds)
    return {
        "decoding": "held to JSON" if response_format else "free",
        "heldout_exact_agreement": round(evaluation.agreement, 4),
        "heldout_field_f1": round(evaluation.mean_score, 4),
        "parse_rate": round(sum(parsed) / len(parsed), 4),
        "share_at_target": round(evaluation.share_at_target, 4),
        "agreement_on_share": round(evaluation.calibration.retained_agreement, 4),
        "latency_p50_ms": round(1000 * statistics.median(ranked), 1),
        "latency_p99_ms": round(1000 * ranked[int(0.99 * (len(ranked) - 1))], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-intent", type=int, default=90)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--data-dir", default="./stillroom-data")
    args = parser.parse_args()
    extraction = _extraction()
    exchanges = extraction.snips_exchanges(args.per_intent)
    curated = curate(exchanges, CurationConfig(), embed=Encoder().encode)
    print(f"{len(curated.train)} train, {len(curated.heldout)} held out", flush=True)
    base = resolve_base_model(None, Path(args.data_dir))
    last = [0.0]

    def progress(p: Any) -> None:
        if time.monotonic() - last[0] > 30 or p.step == p.total_steps:
            last[0] = time.monotonic()
            print(f"  step {p.step}/{p.total_steps} loss {p.loss:.3f} eta {p.eta_seconds:.0f}s")

    model = StudentModel(base)
    adapter, training_seconds = None, 0.0
    if args.epochs > 0:
        with tempfile.TemporaryDirectory() as work:
            result = train_lora(
                base_model=base,
                examples=[TrainingExample(e.messages, e.answer) for e in curated.train],
                config=LoraTrainingConfig(epochs=args.epochs),
                output_dir=Path(work) / "adapter",
                on_progress=progress,
            )
            model.load_adapter("extraction", str(result.adapter_dir))
        adapter, training_seconds = "extraction", result.seconds
    longest = max(len(model.tokenizer.encode(e.answer)) for e in curated.train + curated.heldout)
    budget = min(512, longest + 8)  # as the distiller's own evaluation
    rows = [
        judged(model, adapter, curated, response_format=None, budget=budget, target=args.target),
        judged(
            model,
            adapter,
            curated,
            response_format=exchanges[0].request["response_format"],
            budget=budget,
            target=args.target,
        ),
    ]
    figures = {"training_seconds": round(training_seconds, 1), "epochs": args.epochs, "rows": rows}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
