"""Every Prometheus metric stillroom exports, defined once, on a registry given to it.

Names follow DESIGN.md ("Metrics"); all start with ``stillroom_``. Tests build a fresh
``CollectorRegistry`` per app and read values from it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SERVED_BY = ("teacher", "student", "fallback")

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1)


class Metrics:
    """The metrics of one process, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
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
        self.store_up = Gauge(
            "stillroom_store_up",
            "1 when the last write to the store succeeded, 0 while it is unreachable.",
            registry=r,
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
        self.drift_score = Gauge(
            "stillroom_drift_score",
            "Latest drift check per task: input (ratio, 1 means none) and agreement (window "
            "agreement of shadow and audit pairs).",
            ["task", "kind"],
            registry=r,
        )
        self.step_downs = Counter(
            "stillroom_drift_step_downs",
            "Times a live task stepped down to shadow on drift, by reason.",
            ["task", "reason"],
            registry=r,
        )
        for served_by in SERVED_BY:
            for stream in ("true", "false"):
                self.request_seconds.labels(served_by=served_by, stream=stream)
        for reason in ("unreachable", "timeout", "stream_cut"):
            self.teacher_failures.labels(reason=reason)
        self.store_up.set(1)
