"""Routing gates on CLINC150: how much traffic the student can serve, at what agreement.

Uses the student that ``bench/distill.py --out DIR`` trained (its adapter and held-out
results). The held-out results are what the difficulty gate knows; CLINC150's test
utterances of the same intents are new traffic. For each new request the student answers
(greedy, with log-probabilities), and the figures are:

- the curve of share served by the student against agreement on what it served, for the
  confidence gate alone, the difficulty gate alone, and both, and the largest share at
  95% agreement for each;
- the time a routing decision takes on this CPU: the policy/bucket/eligibility decision,
  and the difficulty gate's embedding and nearest-neighbour search (p50/p99).

Run: ``.venv/bin/python bench/router.py --from DIR`` after ``bench/distill.py --out DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, and this file's name would
# shadow the router package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

from core.agreement import score
from core.embedding import Encoder
from core.profile import prompt_key
from core.wire import ChatCompletionRequest
from distiller.base_model import resolve_base_model
from distiller.datasets import clinc150_banking20
from distiller.decoding import StreamPiece
from distiller.inference import StudentModel
from router.policy import Policy, StudentRef
from router.route import decide


def new_traffic(system: str, intents: list[str], limit: int) -> list[tuple[list[Any], str]]:
    data = clinc150_banking20()
    rows = [row for row in data["test"] if row[1] in intents][:limit]
    return [
        ([{"role": "system", "content": system}, {"role": "user", "content": text}], intent)
        for text, intent in rows
    ]


def best_share(points: list[tuple[float, float]], target: float) -> float:
    """Largest share whose agreement reaches the target."""
    return max((share for share, agreement in points if agreement >= target), default=0.0)


def curve(keep: np.ndarray[Any, Any], agrees: np.ndarray[Any, Any]) -> tuple[float, float]:
    share = float(keep.mean())
    agreement = float(agrees[keep].mean()) if keep.any() else 1.0
    return share, agreement


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    source = Path(args.source)
    known = json.loads((source / "heldout.json").read_text())
    system = known[0]["messages"][0]["content"]
    intents = sorted({k["teacher"] for k in known})
    traffic = new_traffic(system, intents, args.requests)
    model = StudentModel(resolve_base_model(None, Path(args.data_dir)))
    model.load_adapter("banking", str(source / "adapter"))
    encoder = Encoder()

    import faiss

    known_vectors = np.ascontiguousarray(encoder.encode([prompt_key(k["messages"]) for k in known]))
    index = faiss.IndexFlatIP(known_vectors.shape[1])
    index.add(known_vectors)
    known_agrees = np.array([1.0 if k["agrees"] else 0.0 for k in known])

    confidences, agrees, difficulty, gate_seconds = [], [], [], []
    for number, (messages, intent) in enumerate(traffic, start=1):
        generation = model.generate(messages, adapter="banking", max_new_tokens=12)
        confidences.append(generation.mean_logprob)
        agrees.append(score("label", generation.text, intent).agrees)
        began = time.perf_counter()
        vector = encoder.encode([prompt_key(messages)])
        _, found = index.search(np.ascontiguousarray(vector), 5)
        difficulty.append(float(known_agrees[found[0]].mean()))
        gate_seconds.append(time.perf_counter() - began)
        if number % 100 == 0:
            print(f"  {number}/{len(traffic)} requests", flush=True)
    confidence = np.array(confidences)
    agreed = np.array(agrees)
    neighbours = np.array(difficulty)

    thresholds = sorted(set(confidence.tolist()))
    levels = sorted(set(neighbours.tolist()))
    alone = [curve(confidence >= t, agreed) for t in thresholds]
    by_difficulty = [curve(neighbours >= level, agreed) for level in levels]
    both = [
        curve((confidence >= t) & (neighbours >= level), agreed)
        for t in thresholds[:: max(1, len(thresholds) // 200)]
        for level in levels
    ]
    first_token, whole = stream_costs(model, traffic[: args.stream_samples])
    decision_seconds = decision_times(intents)
    decide_p50, decide_p99 = percentiles(decision_seconds)
    gate_p50, gate_p99 = percentiles(gate_seconds)
    return {
        "requests": len(traffic),
        "student_agreement_on_all": round(float(agreed.mean()), 4),
        "share_at_95_confidence": round(best_share(alone, args.target), 4),
        "share_at_95_difficulty": round(best_share(by_difficulty, args.target), 4),
        "share_at_95_both": round(best_share(both, args.target), 4),
        "curve_confidence": [
            (round(s, 3), round(a, 3)) for s, a in alone[:: max(1, len(alone) // 12)]
        ],
        "student_first_token_p50_ms": round(1000 * statistics.median(first_token), 1),
        "student_whole_answer_p50_ms": round(1000 * statistics.median(whole), 1),
        "decision_p50_us": round(decide_p50 * 1e6, 1),
        "decision_p99_us": round(decide_p99 * 1e6, 1),
        "difficulty_gate_p50_ms": round(gate_p50 * 1e3, 2),
        "difficulty_gate_p99_ms": round(gate_p99 * 1e3, 2),
    }


def stream_costs(
    model: StudentModel, traffic: list[tuple[list[Any], str]]
) -> tuple[list[float], list[float]]:
    """What answering a stream whole first costs: time to the student's first token
    (what a token-by-token stream would show) against time to its whole answer (what the
    proxy's checked stream shows as its first chunk)."""
    first, whole = [], []
    for messages, _ in traffic:
        began = time.perf_counter()
        seen_first = None
        for event in model.generate_stream(messages, adapter="banking", max_new_tokens=12):
            if seen_first is None and isinstance(event, StreamPiece) and event.text:
                seen_first = time.perf_counter() - began
        whole.append(time.perf_counter() - began)
        first.append(seen_first if seen_first is not None else whole[-1])
    return first, whole


def decision_times(intents: list[str]) -> list[float]:
    """The request-path decision (policy, sticky bucket, eligibility) for 20,000 requests."""
    policy = Policy(
        task="banking",
        mode="live",
        cutover_percent=50,
        student=StudentRef("v", 1, "lora", "banking", "label", -0.5, {"max_prompt_chars": 400}),
    )
    payloads: list[dict[str, Any]] = [
        {
            "model": "gpt-4o-mini",
            "user": f"u{n}",
            "messages": [{"role": "user", "content": f"{intents[n % len(intents)]} {n}"}],
        }
        for n in range(20_000)
    ]
    requests = [ChatCompletionRequest.model_validate(p) for p in payloads]
    seconds = []
    for payload, request in zip(payloads, requests, strict=True):
        began = time.perf_counter()
        decide(policy, request, payload, f"user:{payload['user']}")
        seconds.append(time.perf_counter() - began)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", required=True, help="bench/distill.py --out DIR")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--stream-samples", type=int, default=100)
    parser.add_argument("--data-dir", default="stillroom-data")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(args)
    print("\nrouting gates on CLINC150 test utterances (new traffic)")
    for key, value in figures.items():
        print(f"  {key:<28} {value}")
    share = figures["share_at_95_both"]
    print(
        f"  [{'met' if share >= 0.8 else 'MISSED':<6}] >= 80% of traffic on the student at "
        f">= 95% agreement ({share:.0%})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
