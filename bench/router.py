"""Routing gates on CLINC150: how much traffic each kind of student can serve, at what
agreement, how fast.

Uses the students that ``bench/distill.py --out DIR`` trained (the LoRA adapter, the
classifier head, and their held-out results). The held-out results are what the difficulty
gate knows; CLINC150's test utterances of the same intents are new traffic. For each new
request each student answers, and the figures, side by side, are:

- the curve of share served by the student against agreement on what it served, for the
  confidence gate alone, the difficulty gate alone, and both, and the largest share at
  95% agreement for each;
- the student's time per request (p50/p99): greedy generation for LoRA; embedding and
  head for the classifier;
- classifier: the whole product on the wire. A ``stillroom proxy`` process whose task has
  the classifier live at 100% (calibrated threshold from the held-out split) serves the
  new traffic and 100 out-of-scope utterances, sequentially, over HTTP: share served by the
  student, agreement on it, share of out-of-scope escalated, and latency per request
  end to end (p50/p99) as the client sees it;
- LoRA: time to first token against time to the whole answer, and the time a routing
  decision takes on this CPU (policy/bucket/eligibility, difficulty gate).

- the error budget (``budget``, see bench/error_budget.py): a classifier live on new
  traffic with the threshold controller, in the real store: share served and realised
  agreement with its interval, before the controller moved and after it has seen
  ``--audits`` audits; and a run whose student gets worse mid-run: when the controller
  tightened, when drift would have stepped down, and the windows of 200 served answers
  below the target by more than their interval.

Run: ``.venv/bin/python bench/router.py --from DIR`` after ``bench/distill.py --out DIR``;
``--kinds classifier`` for the classifier alone (about a minute); ``--kinds budget`` for
the error budget alone (it trains its own classifier: no ``--from`` needed, a minute or two).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, and this file's name would
# shadow the router package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Any

import httpx
import numpy as np
import uvicorn
from sqlmodel import Session

from core.agreement import score
from core.classifier import Head
from core.embedding import Encoder
from core.evaluation import TrainingProfile, VersionEvaluation
from core.profile import prompt_key
from core.store import create_store_engine, create_tables
from core.tables import StudentHead, StudentVersion, Task
from core.wire import ChatCompletion, ChatCompletionRequest, Usage
from distiller.base_model import resolve_base_model
from distiller.datasets import clinc150_banking20
from distiller.decoding import StreamPiece
from distiller.evaluation import calibrate
from distiller.inference import StudentModel
from router.policy import Policy, StudentRef
from router.route import decide

STILLROOM = str(Path(sys.executable).with_name("stillroom"))
OUT_OF_SCOPE = "out_of_scope"


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


def error_budget() -> Any:
    """bench/error_budget.py as a module (this file's folder is off sys.path)."""
    spec = importlib.util.spec_from_file_location(
        "error_budget", Path(__file__).with_name("error_budget.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["error_budget"] = module
    spec.loader.exec_module(module)
    return module


def extraction_figures(args: argparse.Namespace) -> None:
    """The extraction task: an extractor trained on SNIPS, then new traffic through a
    proxy (bench/extraction.py)."""
    spec = importlib.util.spec_from_file_location(
        "extraction", Path(__file__).with_name("extraction.py")
    )
    assert spec is not None
    assert spec.loader is not None
    extraction = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extraction)
    curated, candidate = extraction.distill(90, args.target, Path(tempfile.mkdtemp()))
    figures = extraction.distillation_figures(curated, candidate)
    figures |= extraction.served_through_proxy(candidate, args.requests)
    print("\nrouting on SNIPS validation utterances (new traffic), extractor")
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


def run(args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    if "budget" in args.kinds:
        figures["budget"] = error_budget().run(args)
    if "classifier" in args.kinds:
        figures["classifier"] = run_classifier(args)
    if "lora" in args.kinds:
        figures["lora"] = run_lora(args)
    return figures


def run_lora(args: argparse.Namespace) -> dict[str, Any]:
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

    confidences, agrees, difficulty, gate_seconds, student_seconds = [], [], [], [], []
    for number, (messages, intent) in enumerate(traffic, start=1):
        began = time.perf_counter()
        generation = model.generate(messages, adapter="banking", max_new_tokens=12)
        student_seconds.append(time.perf_counter() - began)
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
    student_p50, student_p99 = percentiles(student_seconds)
    return {
        "requests": len(traffic),
        "student_agreement_on_all": round(float(agreed.mean()), 4),
        "share_at_95_confidence": round(best_share(alone, args.target), 4),
        "share_at_95_difficulty": round(best_share(by_difficulty, args.target), 4),
        "share_at_95_both": round(best_share(both, args.target), 4),
        "curve_confidence": [
            (round(s, 3), round(a, 3)) for s, a in alone[:: max(1, len(alone) // 12)]
        ],
        "student_p50_ms": round(1000 * student_p50, 2),
        "student_p99_ms": round(1000 * student_p99, 2),
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


def run_classifier(args: argparse.Namespace) -> dict[str, Any]:
    source = Path(args.source)
    known = json.loads((source / "heldout-classifier.json").read_text())
    head = Head.load(source / "head.npz")
    system = known[0]["messages"][0]["content"]
    intents = sorted({k["teacher"] for k in known})
    traffic = new_traffic(system, intents, args.requests)
    calibration = calibrate([(k["confidence"], k["agrees"]) for k in known], args.target)
    if calibration.threshold is None:
        raise SystemExit("the classifier reached no threshold on its held-out split")
    encoder = Encoder()
    encoder.encode(["warm up"])

    import faiss

    known_vectors = np.ascontiguousarray(encoder.encode([prompt_key(k["messages"]) for k in known]))
    index = faiss.IndexFlatIP(known_vectors.shape[1])
    index.add(known_vectors)
    known_agrees = np.array([1.0 if k["agrees"] else 0.0 for k in known])

    confidences, agrees, difficulty, student_seconds = [], [], [], []
    for messages, intent in traffic:
        began = time.perf_counter()
        vector = encoder.encode([prompt_key(messages)])[0]
        prediction = head.predict(vector)
        student_seconds.append(time.perf_counter() - began)
        confidences.append(prediction.logprob if prediction.familiar else -np.inf)
        agrees.append(score("label", prediction.answer, intent).agrees)
        _, found = index.search(np.ascontiguousarray(vector.reshape(1, -1)), 5)
        difficulty.append(float(known_agrees[found[0]].mean()))
    confidence = np.array(confidences)
    agreed = np.array(agrees)
    neighbours = np.array(difficulty)
    thresholds = sorted(set(confidence[np.isfinite(confidence)].tolist()))
    levels = sorted(set(neighbours.tolist()))
    alone = [curve(confidence >= t, agreed) for t in thresholds]
    by_difficulty = [curve(neighbours >= level, agreed) for level in levels]
    both = [
        curve((confidence >= t) & (neighbours >= level), agreed)
        for t in thresholds[:: max(1, len(thresholds) // 200)]
        for level in levels
    ]
    student_p50, student_p99 = percentiles(student_seconds)
    print(f"  classifier: {len(traffic)} requests answered offline; now through the proxy")
    wire = served_through_proxy(args, head, calibration.threshold, system, traffic)
    return {
        "requests": len(traffic),
        "student_agreement_on_all": round(float(agreed.mean()), 4),
        "share_at_95_confidence": round(best_share(alone, args.target), 4),
        "share_at_95_difficulty": round(best_share(by_difficulty, args.target), 4),
        "share_at_95_both": round(best_share(both, args.target), 4),
        "student_p50_ms": round(1000 * student_p50, 2),
        "student_p99_ms": round(1000 * student_p99, 2),
        "calibrated_threshold": round(calibration.threshold, 4),
        **wire,
    }


def served_through_proxy(
    args: argparse.Namespace,
    head: Head,
    threshold: float,
    system: str,
    traffic: list[tuple[list[Any], str]],
) -> dict[str, Any]:
    """New traffic and out-of-scope utterances, sequentially, through a `stillroom proxy`
    process whose task has the classifier live at 100%."""
    work = Path(tempfile.mkdtemp(prefix="stillroom-router-bench-"))
    database = f"sqlite:///{work / 'stillroom.db'}"
    publish_classifier(database, head, threshold, traffic)
    answers = {messages[-1]["content"]: intent for messages, intent in traffic}
    teacher_port, proxy_port = free_port(), free_port()
    teacher = uvicorn.Server(
        uvicorn.Config(gold_teacher(answers), port=teacher_port, log_level="warning")
    )
    threading.Thread(target=teacher.run, daemon=True).start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")},
        "STILLROOM_DATABASE_URL": database,
        "STILLROOM_DATA_DIR": str(work / "data"),
        "STILLROOM_TEACHER_URL": f"http://127.0.0.1:{teacher_port}/v1",
        "STILLROOM_LOG_LEVEL": "warning",
        "STILLROOM_TENANCY": "single",  # one team: the task published below is its own
    }
    proxy = subprocess.Popen(
        [STILLROOM, "proxy", "--port", str(proxy_port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{proxy_port}"
    try:
        wait_up(url)
        out_of_scope = [
            ([{"role": "system", "content": system}, {"role": "user", "content": text}], None)
            for text in clinc150_banking20()["oos"]
        ]
        with httpx.Client(base_url=url, timeout=60) as client:
            for messages, _ in traffic[:20]:  # the first requests load the encoder
                ask_proxy(client, messages)
            results = [(ask_proxy(client, m), intent) for m, intent in traffic + out_of_scope]
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
        teacher.should_exit = True
    in_scope = [(r, intent) for r, intent in results if intent is not None]
    student = [(r, intent) for r, intent in in_scope if r[0] == "student"]
    escalated = [r for r, intent in results if intent is None and r[0] != "student"]
    student_seconds = [r[2] for r, _ in student]
    all_seconds = [r[2] for r, _ in results]
    p50, p99 = percentiles(student_seconds) if student_seconds else (float("nan"),) * 2
    all_p50, all_p99 = percentiles(all_seconds)
    return {
        "proxy_share_on_student": round(len(student) / len(in_scope), 4),
        "proxy_agreement_on_student": round(
            sum(score("label", r[1], intent).agrees for r, intent in student) / len(student), 4
        )
        if student
        else None,
        "proxy_out_of_scope_escalated": round(len(escalated) / len(out_of_scope), 4),
        "proxy_student_p50_ms": round(1000 * p50, 2),
        "proxy_student_p99_ms": round(1000 * p99, 2),
        "proxy_all_p50_ms": round(1000 * all_p50, 2),
        "proxy_all_p99_ms": round(1000 * all_p99, 2),
    }


def publish_classifier(
    database: str, head: Head, threshold: float, traffic: list[tuple[list[Any], str]]
) -> None:
    engine = create_store_engine(database)
    create_tables(engine)
    version_id = uuid.uuid4().hex
    longest = max(sum(len(m["content"]) for m in messages) for messages, _ in traffic)
    with Session(engine) as session:
        session.add(
            Task(
                name="banking",
                mode="live",
                cutover_percent=100.0,
                audit_percent=0.0,
                active_version_id=version_id,
            )
        )
        session.add(
            StudentVersion(
                id=version_id,
                task="banking",
                number=1,
                kind="classifier",
                state="published",
                base_model=head.encoder,
                adapter_name="banking-v1",
                adapter_path="-",
                metric="label",
                confidence_threshold=threshold,
                evaluation=VersionEvaluation(
                    profile=TrainingProfile(
                        models=["gpt-4o-mini"],
                        response_formats=["text"],
                        tools=False,
                        max_prompt_chars=longest,
                    )
                ).document(),
            )
        )
        session.add(StudentHead(version_id=version_id, data=head.to_bytes()))
        session.commit()
    engine.dispose()


def ask_proxy(client: httpx.Client, messages: list[Any]) -> tuple[str, str, float]:
    """Who served, the answer, and the seconds the client waited."""
    began = time.perf_counter()
    response = client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": messages},
        headers={"x-stillroom-task": "banking", "authorization": "Bearer sk-bench"},
    )
    seconds = time.perf_counter() - began
    response.raise_for_status()
    served = response.headers["x-stillroom-served-by"]
    return served, response.json()["choices"][0]["message"]["content"], seconds


def gold_teacher(answers: dict[str, str]) -> Any:
    """A teacher that answers each utterance with its gold intent (``out_of_scope`` for
    the rest), in OpenAI's wire format."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        payload = json.loads(body or b"{}")
        text = (payload.get("messages") or [{}])[-1].get("content", "")
        completion = ChatCompletion.from_text(
            answers.get(text, OUT_OF_SCOPE),
            model="gpt-4o-mini",
            id="chatcmpl-bench",
            usage=Usage.of(60, 3),
        )
        content = completion.model_dump_json().encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_up(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the proxy at {url} did not come up")


def aims(figures: dict[str, Any]) -> list[tuple[str, bool]]:
    checks = []
    if "classifier" in figures:
        c = figures["classifier"]
        checks += [
            (
                "classifier: >= 90% of traffic on the student through the proxy",
                c["proxy_share_on_student"] >= 0.9,
            ),
            (
                "classifier: >= 95% agreement on what it served",
                (c["proxy_agreement_on_student"] or 0) >= 0.95,
            ),
            ("classifier: p50 <= 15 ms per request", c["proxy_student_p50_ms"] <= 15),
        ]
    if "lora" in figures:
        share = figures["lora"]["share_at_95_both"]
        checks.append(("lora: >= 80% of traffic on the student at >= 95% agreement", share >= 0.8))
    if "budget" in figures:
        checks += budget_aims(figures["budget"])
    return checks


def budget_aims(budget: dict[str, Any]) -> list[tuple[str, bool]]:
    steady = next(v for k, v in budget["steady"].items() if k.startswith("after_"))
    target = budget["target"]
    degraded = budget["degraded"]
    tightened, stepped = degraded["first_tighten_after"], degraded["drift_step_down_at"]
    return [
        (
            "budget: >= 95% of in-scope traffic served after the controller's audits",
            (steady["share_of_in_scope"] or 0) >= 0.95,
        ),
        (
            "budget: realised agreement within 1.5 points above the target",
            target <= (steady["agreement"] or 0) <= target + 0.015,
        ),
        (
            "budget: the controller tightens before drift steps the task down",
            tightened is not None and (stepped is None or tightened <= stepped),
        ),
        (
            "budget: no window of 200 served answers below the target beyond its interval",
            degraded["windows_below_target_beyond_interval"] == 0,
        ),
    ]


def budget_report(budget: dict[str, Any]) -> list[str]:
    lines = [f"  error budget (target {budget['target']:.0%}): {json.dumps(budget['calibration'])}"]
    for run in ("steady", "degraded"):
        for name, value in budget[run].items():
            if name != "moves":
                lines.append(f"  {run} {name}: {json.dumps(value)}")
        moves = [f"{m['at']} {m['direction']} {m['to']}" for m in budget[run]["moves"]]
        lines.append(f"  {run} moves (at request, direction, to): {', '.join(moves) or 'none'}")
    return lines


def report(figures: dict[str, Any]) -> str:
    kinds = [kind for kind in ("classifier", "lora") if kind in figures]
    rows = list(dict.fromkeys(key for kind in kinds for key in figures[kind]))
    lines = [f"  {'':<30}" + "".join(f"{kind:>14}" for kind in kinds)] if kinds else []
    for row in rows:
        if row == "curve_confidence":
            continue
        values = "".join(f"{_shown(figures[kind].get(row)):>14}" for kind in kinds)
        lines.append(f"  {row:<30}{values}")
    if "lora" in figures:
        lines.append(f"  lora curve (share, agreement): {figures['lora']['curve_confidence']}")
    if "budget" in figures:
        lines += budget_report(figures["budget"])
    lines += [f"  [{'met' if ok else 'MISSED':<6}] {name}" for name, ok in aims(figures)]
    return "\n".join(lines)


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", help="bench/distill.py --out DIR")
    parser.add_argument(
        "--kinds",
        default="classifier,lora,budget",
        type=lambda text: [k.strip() for k in text.split(",") if k.strip()],
        help="what to run, comma-separated: classifier, lora, budget (the error budget)",
    )
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--stream-samples", type=int, default=100)
    parser.add_argument("--data-dir", default="stillroom-data")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--task",
        default="intents",
        choices=["intents", "extraction"],
        help="intents (CLINC150, the default) or extraction (SNIPS: bench/extraction.py)",
    )
    error_budget().add_options(parser)
    args = parser.parse_args()
    if args.task == "extraction":
        extraction_figures(args)
        return
    if args.source is None and set(args.kinds) - {"budget"}:
        parser.error("--from DIR is needed for the classifier and lora figures")
    figures = run(args)
    print("\nrouting on CLINC150 test utterances (new traffic)")
    print(report(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
