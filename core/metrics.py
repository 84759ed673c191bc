"""Every Prometheus metric stillroom exports, defined once, on a registry given to it.

Names follow DESIGN.md ("Metrics"); all start with ``stillroom_``. Tests build a fresh
``CollectorRegistry`` per app and read values from it.

Several worker processes (``stillroom proxy --workers N``) share their metrics through
prometheus_client's multiprocess mode: with ``PROMETHEUS_MULTIPROC_DIR`` set in the
environment before start, every process writes its values to files there and ``/metrics``
serves the aggregate (:func:`exposition`). Each gauge says how its per-process values
combine (``multiprocess_mode``); ``live*`` modes drop the values of processes that ended.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

log = logging.getLogger("stillroom.metrics")

SERVED_BY = ("teacher", "student", "fallback", "cache")
TRAINING_OUTCOMES = ("published", "rejected", "failed")
STUDENT_KINDS = ("lora", "classifier", "extractor")
SCORING_KINDS = ("shadow", "audit")
FEEDBACK_RATINGS = ("good", "bad")
SUSPICIONS = ("retry", "reask")  # why an answer is suspect (exchanges.suspect)
DELETION_REASONS = ("retention", "request")
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What the distiller's work moves (training, publishing, drift checks, the threshold
# controller): in ``stillroom serve`` it runs in a child process that writes these.
DISTILLER_FAMILIES = frozenset(
    {
        "stillroom_training_runs",
        "stillroom_training_run_seconds",
        "stillroom_versions_published",
        "stillroom_drift_score",
        "stillroom_drift_step_downs",
        "stillroom_confidence_threshold",
        "stillroom_threshold_moves",
        "stillroom_realised_agreement",
    }
)

# Counters both processes of ``stillroom serve`` move (the distiller's retention and the
# proxy's deletions on request): ``/metrics`` adds the child's values to this process's.
SHARED_FAMILIES = frozenset({"stillroom_exchanges_deleted"})

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1)
_TRAINING_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)


class Metrics:
    """The metrics of one process, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._distiller_directory: Path | None = None
        r = self.registry
        self.requests = Counter(
            "stillroom_requests",
            "Chat completion requests answered, by task, who served them and outcome.",
            ["task", "served_by", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "stillroom_request_seconds",
            "Whole request latency as the client sees it.",
            ["served_by", "stream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead_seconds = Histogram(
            "stillroom_overhead_seconds",
            "Time the proxy itself adds to a request (total minus time waiting on the "
            "upstream model).",
            ["stream"],
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "stillroom_tokens",
            "Tokens of answered requests, by task, who served them and direction (in/out).",
            ["task", "served_by", "direction"],
            registry=r,
        )
        self.cost_usd = Counter(
            "stillroom_cost_usd",
            "Cost in USD of what was served, from the price table.",
            ["task", "served_by"],
            registry=r,
        )
        self.unpriced = Counter(
            "stillroom_unpriced_requests",
            "Answered requests whose model has no entry in the price table.",
            ["model"],
            registry=r,
        )
        self.teacher_failures = Counter(
            "stillroom_teacher_failures",
            "Teacher calls that produced no answer: unreachable, timeout, cut mid-stream.",
            ["reason"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "stillroom_client_disconnects",
            "Requests whose client went away before the answer was complete.",
            registry=r,
        )
        self.capture_queue_depth = Gauge(
            "stillroom_capture_queue_depth",
            "Exchanges waiting in memory to be written to the store.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.capture_written = Counter(
            "stillroom_capture_written",
            "Exchanges written to the store.",
            registry=r,
        )
        self.capture_spilled = Counter(
            "stillroom_capture_spilled",
            "Exchanges spilled to a local file because the store was unreachable or slow.",
            registry=r,
        )
        self.capture_rejected = Counter(
            "stillroom_capture_rejected",
            "Exchanges the store refused as data (kept in the rejected file for inspection).",
            registry=r,
        )
        self.capture_schema_errors = Counter(
            "stillroom_capture_schema_errors",
            "Writes of exchanges that failed on the store's schema (a missing table or column: "
            "the store is not at this build's revision); their exchanges were spilled, not lost.",
            registry=r,
        )
        self.exchanges_deleted = Counter(
            "stillroom_exchanges_deleted",
            "Exchanges deleted from the store, by reason: retention (older than the task's "
            "retention) or request (DELETE /admin/exchanges, `stillroom forget`).",
            ["reason"],
            registry=r,
        )
        self.store_up = Gauge(
            "stillroom_store_up",
            "1 when the last write to the store succeeded, 0 while it is unreachable.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.routing = Counter(
            "stillroom_routing_decisions",
            "Why each request of a task with a student went where it went: student, or the "
            "reason the teacher answered (off, shadow, cutover, n, tools, low_confidence, ...).",
            ["task", "reason"],
            registry=r,
        )
        self.student_seconds = Histogram(
            "stillroom_student_seconds",
            "Time the student took to answer (served, escalated or shadow).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.scored = Counter(
            "stillroom_scored_pairs",
            "Student answers scored against the teacher's, by kind (shadow, audit) and "
            "whether they agreed.",
            ["task", "kind", "agrees"],
            registry=r,
        )
        self.scoring_dropped = Counter(
            "stillroom_scoring_dropped",
            "Shadow or audit jobs dropped because the scoring queue was full.",
            ["kind"],
            registry=r,
        )
        self.scoring_failures = Counter(
            "stillroom_scoring_failures",
            "Shadow or audit jobs that got no answer from one side.",
            ["kind", "side"],
            registry=r,
        )
        self.counterfactual_cost_usd = Counter(
            "stillroom_counterfactual_cost_usd",
            "What the teacher would have cost for what the student served.",
            ["task"],
            registry=r,
        )
        self.savings_usd = Counter(
            "stillroom_savings_usd",
            "Counterfactual teacher cost minus the student's cost, for what the student served.",
            ["task"],
            registry=r,
        )
        self.cache_savings_usd = Counter(
            "stillroom_cache_savings_usd",
            "What the teacher would have cost for the requests answered from the cache (which "
            "cost nothing): the cache's savings, apart from the student's.",
            ["task"],
            registry=r,
        )
        self.audit_cost_usd = Counter(
            "stillroom_audit_cost_usd",
            "What the teacher calls auditing live student answers cost: real spend, but no "
            "client's request, so in none of the request metrics.",
            ["task"],
            registry=r,
        )
        self.feedback = Counter(
            "stillroom_feedback",
            "Answers an app rated through POST /admin/exchanges/{id}/feedback, by rating "
            "(good, bad) and who served them.",
            ["task", "rating", "served_by"],
            registry=r,
        )
        self.suspect_answers = Counter(
            "stillroom_suspect_answers",
            "Answers left out of training because their client asked again: retry (the same "
            "request within seconds) or reask (the answer sent back with a complaint).",
            ["task", "reason"],
            registry=r,
        )
        self.drift_score = Gauge(
            "stillroom_drift_score",
            "Latest drift check per task: input (ratio, 1 means none) and agreement (window "
            "agreement of shadow and audit pairs).",
            ["task", "kind"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.step_downs = Counter(
            "stillroom_drift_step_downs",
            "Times a live task stepped down to shadow on drift, by reason.",
            ["task", "reason"],
            registry=r,
        )
        # Routing policy as each proxy last read it from the store (every second).
        self.task_mode = Gauge(
            "stillroom_task_mode",
            "1 for the task's current mode (off, shadow, live), 0 for the others.",
            ["task", "mode"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.task_cutover_percent = Gauge(
            "stillroom_task_cutover_percent",
            "Share of a live task's traffic the student serves, as set (0-100).",
            ["task"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.task_active_version = Gauge(
            "stillroom_task_active_version",
            "Number of the task's live student version (v1 is 1); 0 when it has none.",
            ["task"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.training_runs = Counter(
            "stillroom_training_runs",
            "Finished training runs by outcome: published, rejected (by the gate or the "
            "student server) or failed (an error, or too few pairs).",
            ["task", "outcome"],
            registry=r,
        )
        self.training_run_seconds = Histogram(
            "stillroom_training_run_seconds",
            "Duration of a training run, from claim to outcome (curate, train, evaluate, gate, "
            "publish).",
            ["task", "outcome"],
            buckets=_TRAINING_BUCKETS,
            registry=r,
        )
        self.versions_published = Counter(
            "stillroom_versions_published",
            "Student versions that passed the gate and became the task's active version, by "
            "kind (lora, classifier).",
            ["task", "kind"],
            registry=r,
        )
        # The threshold controller's view (router.threshold_control), each round.
        self.confidence_threshold = Gauge(
            "stillroom_confidence_threshold",
            "Confidence threshold a live task's student answers at: the admin's, the "
            "controller's or the calibrated one.",
            ["task"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.threshold_moves = Counter(
            "stillroom_threshold_moves",
            "Moves of a task's confidence threshold by the controller, by direction (loosen, "
            "tighten).",
            ["task", "direction"],
            registry=r,
        )
        self.realised_agreement = Gauge(
            "stillroom_realised_agreement",
            "Agreement of the scored answers a live task's student serves at its threshold "
            "(the controller's window): estimate, low and high of its two-sided 95% "
            "Clopper-Pearson interval, and lower_bound, the one-sided 95% bound it is held to.",
            ["task", "figure"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        for served_by in SERVED_BY:
            for stream in ("true", "false"):
                self.request_seconds.labels(served_by=served_by, stream=stream)
        for reason in ("unreachable", "timeout", "stream_cut"):
            self.teacher_failures.labels(reason=reason)
        for reason in DELETION_REASONS:
            self.exchanges_deleted.labels(reason=reason)
        for kind in SCORING_KINDS:
            self.scoring_dropped.labels(kind=kind)
            for side in ("student", "teacher"):
                self.scoring_failures.labels(kind=kind, side=side)
        self.store_up.set(1)

    def prepare_task(self, task: str) -> None:
        """Create a task's training and drift series at zero, so that ``increase()`` counts
        their first event (it takes the first value of a new series as its start)."""
        for outcome in TRAINING_OUTCOMES:
            self.training_runs.labels(task=task, outcome=outcome)
        for kind in STUDENT_KINDS:
            self.versions_published.labels(task=task, kind=kind)
        for reason in ("agreement", "input"):
            self.step_downs.labels(task=task, reason=reason)

    def prepare_threshold_control(self, task: str) -> None:
        """Create a live task's threshold move series at zero (see ``prepare_task``)."""
        for direction in ("loosen", "tighten"):
            self.threshold_moves.labels(task=task, direction=direction)

    def prepare_student(self, task: str) -> None:
        """Create the series a task's student moves, at zero, once the task has a version:
        ``increase()`` counts a series' first value as nothing, so without these the first
        student answers after a start would be missing from savings and agreement."""
        self.requests.labels(task=task, served_by="student", status="ok")
        self.cost_usd.labels(task=task, served_by="student")
        self.counterfactual_cost_usd.labels(task=task)
        self.savings_usd.labels(task=task)
        self.audit_cost_usd.labels(task=task)
        for kind in SCORING_KINDS:
            for agrees in ("true", "false"):
                self.scored.labels(task=task, kind=kind, agrees=agrees)
        self.prepare_feedback(task)

    def prepare_feedback(self, task: str) -> None:
        """Create a task's feedback and suspect-answer series at zero before their first
        event (see ``prepare_student``)."""
        for rating in FEEDBACK_RATINGS:
            for served_by in SERVED_BY:
                self.feedback.labels(task=task, rating=rating, served_by=served_by)
        for reason in SUSPICIONS:
            self.suspect_answers.labels(task=task, reason=reason)

    def prepare_cache(self, task: str) -> None:
        """Create the series a task's cache moves, at zero, once its cache is on (see
        ``prepare_student``)."""
        self.requests.labels(task=task, served_by="cache", status="ok")
        self.cost_usd.labels(task=task, served_by="cache")
        self.cache_savings_usd.labels(task=task)

    def include_distiller(self, directory: Path) -> None:
        """Serve the distiller's metrics (:data:`DISTILLER_FAMILIES`) from the child process
        that writes them to ``directory`` (``stillroom serve``), in place of this
        process's own, which stay at zero."""
        self._distiller_directory = directory

    def exposition(self) -> bytes:
        """The Prometheus text format of these metrics; in multiprocess mode, of every
        process sharing the directory."""
        directory = multiprocess_directory()
        source: Collector = self.registry
        if directory is not None:
            source = CollectorRegistry()
            MultiProcessCollector(source, path=str(directory))  # type: ignore[no-untyped-call]
        if self._distiller_directory is None:
            return generate_latest(source)
        merged = CollectorRegistry()
        merged.register(_WithDistiller(source, self._distiller_directory))
        return generate_latest(merged)


class _WithDistiller(Collector):
    """This process's metrics, but the distiller's families from its child's files."""

    def __init__(self, own: Collector, directory: Path) -> None:
        self.own = own
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        child: dict[str, Metric] = {}
        if self.directory.is_dir():
            collector = MultiProcessCollector(None, path=str(self.directory))  # type: ignore[no-untyped-call]
            child = {family.name: family for family in collector.collect()}  # type: ignore[no-untyped-call]
        for family in self.own.collect():
            if family.name in SHARED_FAMILIES and family.name in child:
                yield _summed(family, child[family.name])
            elif family.name not in DISTILLER_FAMILIES:
                yield family
        for name, family in child.items():
            if name in DISTILLER_FAMILIES:
                yield family


def _summed(own: Metric, other: Metric) -> Metric:
    """One family of two processes' counters: the values of each series added (its
    ``_created`` time is this process's)."""
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for sample in own.samples:
        values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    for sample in other.samples:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        if not sample.name.endswith("_created"):
            values[key] = values.get(key, 0.0) + sample.value
    merged = Metric(own.name, own.documentation, own.type, own.unit)
    for (name, labels), value in values.items():
        merged.add_sample(name, dict(labels), value)
    return merged


def multiprocess_directory() -> Path | None:
    """Where processes share their metrics, when ``PROMETHEUS_MULTIPROC_DIR`` is set."""
    value = os.environ.get(MULTIPROCESS_ENV)
    return Path(value) if value else None


def reset_multiprocess_directory() -> None:
    """Before the first worker starts: create the directory and remove the files of an
    earlier run (their counters would be added to this run's)."""
    directory = multiprocess_directory()
    if directory is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    stale = glob.glob(str(directory / "*.db"))
    for path in stale:
        os.remove(path)
    if stale:
        log.info("removed %d metrics files of an earlier run from %s", len(stale), directory)


def forget_dead_processes() -> None:
    """Drop the live gauges of processes that ended without saying so (a worker that
    crashed and was replaced). Their counters stay: what they counted happened."""
    directory = multiprocess_directory()
    if directory is None:
        return
    for path in glob.glob(str(directory / "gauge_live*_*.db")):
        pid = Path(path).stem.rsplit("_", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            mark_process_dead(int(pid), str(directory))  # type: ignore[no-untyped-call]


def leave_multiprocess() -> None:
    """On a worker's way out: its live gauges no longer count."""
    directory = multiprocess_directory()
    if directory is not None:
        mark_process_dead(os.getpid(), str(directory))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
