"""The Grafana dashboards of stillroom, written as JSON into ``grafana/dashboards/``.

Change a panel here, then run ``python grafana/build.py``. The tests check that the
committed JSON is this script's output, that every metric a panel queries is one stillroom
exports, that every metric stillroom exports has a panel (or a reason in ``UNPANELLED``),
and that every query parses and returns data on a real Prometheus scraping stillroom.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARDS = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"
RANGE = "$__range"
TASK = 'task="$task"'

# Metrics deliberately left without a panel, with the reason.
UNPANELLED: dict[str, str] = {
    "stillroom_capture_schema_errors": "a fault to fix, not a rate to watch: /readyz fails "
    "with its cause and the capture log names it; alert on any increase",
}


@dataclass
class Panel:
    title: str
    description: str
    targets: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"  # timeseries, stat or state-timeline
    width: int = 8
    height: int = 8
    min: float | None = None
    max: float | None = None
    mappings: list[dict[str, Any]] = field(default_factory=list)
    text_mode: str = "auto"  # stat: "name" shows the legend (a mode) instead of the value


@dataclass
class Row:
    title: str
    panels: list[Panel]


def ratio(numerator: str, denominator: str) -> str:
    return f"{numerator}\n/\n{denominator}"


def quantiles(metric: str, by: str = "", legend: str = "") -> list[tuple[str, str]]:
    """p50 and p99 of a histogram, optionally per label."""
    labels = f"le, {by}" if by else "le"
    return [
        (
            f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket[{RATE}])))",
            f"p{int(q * 100)} {legend}".strip(),
        )
        for q in (0.5, 0.99)
    ]


def share_on_student(selector: str = "", window: str = RANGE, by: str = "") -> str:
    grouping = f"sum by ({by})" if by else "sum"
    student = f'served_by="student"{", " + selector if selector else ""}'
    return ratio(
        f"{grouping} (increase(stillroom_requests_total{{{student}}}[{window}]))",
        f"{grouping} (increase(stillroom_requests_total{{{selector}}}[{window}]))",
    )


def agreement(selector: str = "", window: str = RANGE, by: str = "") -> str:
    grouping = f"sum by ({by})" if by else "sum"
    agreed = f'agrees="true"{", " + selector if selector else ""}'
    return ratio(
        f"{grouping} (increase(stillroom_scored_pairs_total{{{agreed}}}[{window}]))",
        f"{grouping} (increase(stillroom_scored_pairs_total{{{selector}}}[{window}]))",
    )


STORE_STATE = [
    {
        "type": "value",
        "options": {
            "0": {"text": "unreachable", "color": "red", "index": 0},
            "1": {"text": "up", "color": "green", "index": 1},
        },
    }
]
MODE_STATE = [
    {
        "type": "value",
        "options": {
            "0": {"text": "-", "color": "transparent", "index": 0},
            "1": {"text": "current", "color": "green", "index": 1},
        },
    }
]
NO_VERSION = [{"type": "value", "options": {"0": {"text": "none", "index": 0}}}]


def overview() -> list[Row]:
    return [
        Row(
            "Savings and quality over the time range",
            [
                Panel(
                    "Saved",
                    "By the cache: the teacher's price of the answers it gave again; by the "
                    "student: the teacher's price of what it served, minus its cost.",
                    [
                        (f"sum(increase(stillroom_cache_savings_usd_total[{RANGE}]))", "cache"),
                        (f"sum(increase(stillroom_savings_usd_total[{RANGE}]))", "student"),
                    ],
                    unit="currencyUSD",
                    kind="stat",
                    width=6,
                    height=5,
                ),
                Panel(
                    "Served by the student",
                    "Share of chat completion requests the student answered.",
                    [(share_on_student(), "student")],
                    unit="percentunit",
                    kind="stat",
                    width=6,
                    height=5,
                ),
                Panel(
                    "Agreement with the teacher",
                    "Shadow and audit pairs whose student answer agreed with the teacher's.",
                    [(agreement(), "agreement")],
                    unit="percentunit",
                    kind="stat",
                    width=6,
                    height=5,
                ),
                Panel(
                    "Tasks by mode",
                    "How many tasks are off, in shadow, or live.",
                    [("sum by (mode) (max by (task, mode) (stillroom_task_mode))", "{{mode}}")],
                    kind="stat",
                    width=6,
                    height=5,
                ),
            ],
        ),
        Row(
            "Money",
            [
                Panel(
                    "Savings per hour",
                    "Rate of savings by task and path (student, cache), in USD per hour.",
                    [
                        (
                            f"sum by (task) (rate(stillroom_savings_usd_total[{RATE}])) * 3600",
                            "{{task}} student",
                        ),
                        (
                            "sum by (task) "
                            f"(rate(stillroom_cache_savings_usd_total[{RATE}])) * 3600",
                            "{{task}} cache",
                        ),
                    ],
                    unit="currencyUSD",
                    width=6,
                ),
                Panel(
                    "Savings since the proxies started",
                    "Cumulative savings by task and path (each proxy counts from its start).",
                    [
                        ("sum by (task) (stillroom_savings_usd_total)", "{{task}} student"),
                        ("sum by (task) (stillroom_cache_savings_usd_total)", "{{task}} cache"),
                    ],
                    unit="currencyUSD",
                    width=6,
                ),
                Panel(
                    "Cost per hour",
                    "What was served cost, by who served it; what the teacher calls auditing "
                    "the student cost; and what the teacher would have cost for the student's "
                    "answers.",
                    [
                        (
                            f"sum by (served_by) (rate(stillroom_cost_usd_total[{RATE}])) * 3600",
                            "{{served_by}}",
                        ),
                        (
                            f"sum(rate(stillroom_audit_cost_usd_total[{RATE}])) * 3600",
                            "audits (teacher)",
                        ),
                        (
                            f"sum(rate(stillroom_counterfactual_cost_usd_total[{RATE}])) * 3600",
                            "teacher price of student answers",
                        ),
                    ],
                    unit="currencyUSD",
                    width=6,
                ),
                Panel(
                    "Tokens per second",
                    "Prompt (in) and completion (out) tokens by who served them.",
                    [
                        (
                            f"sum by (served_by, direction) (rate(stillroom_tokens_total[{RATE}]))",
                            "{{served_by}} {{direction}}",
                        )
                    ],
                    width=6,
                ),
            ],
        ),
        Row(
            "Traffic",
            [
                Panel(
                    "Requests per second",
                    "Chat completion requests by who served them (fallback: the student "
                    "failed and the teacher answered).",
                    [
                        (
                            f"sum by (served_by) (rate(stillroom_requests_total[{RATE}]))",
                            "{{served_by}}",
                        )
                    ],
                    unit="reqps",
                ),
                Panel(
                    "Served by the student, by task",
                    "Share of each task's requests the student answered.",
                    [(share_on_student(window=RATE, by="task"), "{{task}}")],
                    unit="percentunit",
                    min=0,
                    max=1,
                ),
                Panel(
                    "Routing decisions",
                    "Why requests of tasks with a student went where they went: student, or "
                    "the reason the teacher answered.",
                    [
                        (
                            f"sum by (reason) (rate(stillroom_routing_decisions_total[{RATE}]))",
                            "{{reason}}",
                        )
                    ],
                    unit="reqps",
                ),
            ],
        ),
        Row(
            "Quality",
            [
                Panel(
                    "Agreement by task (30 minute window)",
                    "Shadow and audit agreement with the teacher, per task and kind.",
                    [(agreement(window="30m", by="task, kind"), "{{task}} {{kind}}")],
                    unit="percentunit",
                    min=0,
                    max=1,
                ),
                Panel(
                    "Drift score",
                    "Latest drift check: input (1 means recent inputs are as close to the "
                    "training set as held-out ones) and agreement (window agreement).",
                    [("max by (task, kind) (stillroom_drift_score)", "{{task}} {{kind}}")],
                ),
                Panel(
                    "Step-downs on drift",
                    "Live tasks moved back to shadow by a drift check.",
                    [
                        (
                            "sum by (task, reason) "
                            f"(increase(stillroom_drift_step_downs_total[{RANGE}]))",
                            "{{task}} {{reason}}",
                        )
                    ],
                    kind="stat",
                ),
            ],
        ),
        Row(
            "Latency",
            [
                Panel(
                    "Request latency",
                    "Whole request as the client sees it, by who served it.",
                    quantiles("stillroom_request_seconds", "served_by", "{{served_by}}"),
                    unit="s",
                ),
                Panel(
                    "Proxy overhead",
                    "Time the proxy adds to a request: its latency minus the time spent "
                    "waiting on the teacher or the student.",
                    quantiles("stillroom_overhead_seconds"),
                    unit="s",
                ),
                Panel(
                    "Student answer time",
                    "Time the student took, whether its answer was served, escalated or "
                    "scored in shadow.",
                    quantiles("stillroom_student_seconds"),
                    unit="s",
                ),
            ],
        ),
        Row(
            "Errors",
            [
                Panel(
                    "Requests that failed",
                    "Error answers and requests cut short (aborted), by who served them.",
                    [
                        (
                            "sum by (status, served_by) "
                            f'(rate(stillroom_requests_total{{status!="ok"}}[{RATE}]))',
                            "{{status}} ({{served_by}})",
                        )
                    ],
                    unit="reqps",
                    width=6,
                ),
                Panel(
                    "Teacher failures",
                    "Teacher calls without an answer: unreachable, timeout, stream cut.",
                    [
                        (
                            f"sum by (reason) (rate(stillroom_teacher_failures_total[{RATE}]))",
                            "{{reason}}",
                        )
                    ],
                    unit="reqps",
                    width=6,
                ),
                Panel(
                    "Client disconnects",
                    "Clients that went away before their answer was complete.",
                    [
                        (
                            f"sum(rate(stillroom_client_disconnects_total[{RATE}]))",
                            "disconnects",
                        )
                    ],
                    unit="reqps",
                    width=6,
                ),
                Panel(
                    "Requests without a price",
                    "Answers of models missing from the price table: cost and savings leave "
                    "them out until a price is set.",
                    [
                        (
                            f"sum by (model) (rate(stillroom_unpriced_requests_total[{RATE}]))",
                            "{{model}}",
                        )
                    ],
                    unit="reqps",
                    width=6,
                ),
            ],
        ),
        Row(
            "Capture and scoring",
            [
                Panel(
                    "Store",
                    "Whether every proxy's last write to the store succeeded.",
                    [("min(stillroom_store_up)", "store")],
                    kind="stat",
                    width=4,
                    mappings=STORE_STATE,
                ),
                Panel(
                    "Capture queue",
                    "Exchanges waiting in memory to be written, over all proxies.",
                    [("sum(stillroom_capture_queue_depth)", "waiting")],
                    width=6,
                ),
                Panel(
                    "Exchanges stored per second",
                    "Written to the store, spilled to a local file while the store was "
                    "unreachable, or rejected by the store as data.",
                    [
                        (f"sum(rate(stillroom_capture_written_total[{RATE}]))", "written"),
                        (f"sum(rate(stillroom_capture_spilled_total[{RATE}]))", "spilled"),
                        (f"sum(rate(stillroom_capture_rejected_total[{RATE}]))", "rejected"),
                    ],
                    width=7,
                ),
                Panel(
                    "Scoring jobs lost",
                    "Shadow and audit jobs dropped (queue full) or without an answer from "
                    "one side.",
                    [
                        (
                            f"sum by (kind) (rate(stillroom_scoring_dropped_total[{RATE}]))",
                            "{{kind}} dropped",
                        ),
                        (
                            f"sum by (kind, side) (rate(stillroom_scoring_failures_total[{RATE}]))",
                            "{{kind}}: no {{side}} answer",
                        ),
                    ],
                    width=7,
                ),
                Panel(
                    "Exchanges deleted",
                    "Exchanges deleted from the store in the range, by reason: retention "
                    "(older than their task's retention) or request (DELETE /admin/exchanges).",
                    [
                        (
                            "sum by (reason) "
                            f"(increase(stillroom_exchanges_deleted_total[{RANGE}]))",
                            "{{reason}}",
                        ),
                    ],
                    kind="stat",
                    width=6,
                    text_mode="value_and_name",
                ),
            ],
        ),
        Row(
            "Training",
            [
                Panel(
                    "Training runs",
                    "Finished training runs by outcome over the time range.",
                    [
                        (
                            f"sum by (outcome) (increase(stillroom_training_runs_total[{RANGE}]))",
                            "{{outcome}}",
                        )
                    ],
                    kind="stat",
                ),
                Panel(
                    "Versions published",
                    "Student versions that passed the gate, by kind, over the time range.",
                    [
                        (
                            "sum by (kind) "
                            f"(increase(stillroom_versions_published_total[{RANGE}]))",
                            "{{kind}}",
                        )
                    ],
                    kind="stat",
                ),
                Panel(
                    "Training run duration",
                    "Mean duration of a run by task and outcome, since the distiller started.",
                    [
                        (
                            ratio(
                                "sum by (task, outcome) (stillroom_training_run_seconds_sum)",
                                "sum by (task, outcome) (stillroom_training_run_seconds_count)",
                            ),
                            "{{task}} {{outcome}}",
                        )
                    ],
                    unit="s",
                ),
            ],
        ),
    ]


def task() -> list[Row]:
    return [
        Row(
            "Now",
            [
                Panel(
                    "Mode",
                    "off: the teacher answers; shadow: the student answers on the side and "
                    "is scored; live: the student serves the cutover share.",
                    [(f"max by (mode) (stillroom_task_mode{{{TASK}}}) == 1", "{{mode}}")],
                    kind="stat",
                    width=4,
                    height=5,
                    text_mode="name",
                ),
                Panel(
                    "Cutover",
                    "Share of the task's traffic a live student serves, as set.",
                    [(f"max(stillroom_task_cutover_percent{{{TASK}}})", "cutover")],
                    unit="percent",
                    kind="stat",
                    width=4,
                    height=5,
                ),
                Panel(
                    "Live version",
                    "Number of the student version that serves the task.",
                    [(f"max(stillroom_task_active_version{{{TASK}}})", "version")],
                    unit="prefix:v",
                    kind="stat",
                    width=4,
                    height=5,
                    mappings=NO_VERSION,
                ),
                Panel(
                    "Served by the student",
                    "Share of the task's requests the student answered, over the time range.",
                    [(share_on_student(TASK), "student")],
                    unit="percentunit",
                    kind="stat",
                    width=4,
                    height=5,
                ),
                Panel(
                    "Agreement",
                    "Shadow and audit agreement with the teacher, over the time range.",
                    [(agreement(TASK), "agreement")],
                    unit="percentunit",
                    kind="stat",
                    width=4,
                    height=5,
                ),
                Panel(
                    "Saved",
                    "Savings on this task over the time range, by the student and by the cache.",
                    [
                        (
                            f"sum(increase(stillroom_savings_usd_total{{{TASK}}}[{RANGE}]))",
                            "student",
                        ),
                        (
                            f"sum(increase(stillroom_cache_savings_usd_total{{{TASK}}}[{RANGE}]))",
                            "cache",
                        ),
                    ],
                    unit="currencyUSD",
                    kind="stat",
                    width=4,
                    height=5,
                ),
            ],
        ),
        Row(
            "Routing",
            [
                Panel(
                    "Mode over time",
                    "The task's mode as the proxies read it.",
                    [(f"max by (mode) (stillroom_task_mode{{{TASK}}})", "{{mode}}")],
                    kind="state-timeline",
                    width=12,
                    height=6,
                    mappings=MODE_STATE,
                ),
                Panel(
                    "Cutover over time",
                    "Share of the task's traffic a live student serves, as set.",
                    [(f"max(stillroom_task_cutover_percent{{{TASK}}})", "cutover")],
                    unit="percent",
                    width=12,
                    height=6,
                    min=0,
                    max=100,
                ),
                Panel(
                    "Requests per second",
                    "The task's requests by who served them.",
                    [
                        (
                            "sum by (served_by) "
                            f"(rate(stillroom_requests_total{{{TASK}}}[{RATE}]))",
                            "{{served_by}}",
                        )
                    ],
                    unit="reqps",
                    width=12,
                ),
                Panel(
                    "Routing decisions",
                    "Why each request went where it went: student, or the gate or reason that "
                    "sent it to the teacher (off, shadow, cutover, low_confidence, difficult, "
                    "invalid output, student error, ...).",
                    [
                        (
                            "sum by (reason) "
                            f"(rate(stillroom_routing_decisions_total{{{TASK}}}[{RATE}]))",
                            "{{reason}}",
                        )
                    ],
                    unit="reqps",
                    width=12,
                ),
            ],
        ),
        Row(
            "Quality",
            [
                Panel(
                    "Agreement (30 minute window)",
                    "Share of shadow and audit pairs whose student answer agreed with the "
                    "teacher's.",
                    [(agreement(TASK, window="30m", by="kind"), "{{kind}}")],
                    unit="percentunit",
                    min=0,
                    max=1,
                ),
                Panel(
                    "Scored pairs per second",
                    "Shadow and audit pairs scored, by whether they agreed.",
                    [
                        (
                            "sum by (kind, agrees) "
                            f"(rate(stillroom_scored_pairs_total{{{TASK}}}[{RATE}]))",
                            "{{kind}} agrees={{agrees}}",
                        )
                    ],
                ),
                Panel(
                    "Drift score",
                    "input: recent inputs' distance to the training set over held-out "
                    "inputs' (1 means no drift); agreement: window agreement.",
                    [(f"max by (kind) (stillroom_drift_score{{{TASK}}})", "{{kind}}")],
                ),
                Panel(
                    "Step-downs on drift",
                    "Times the task went from live back to shadow, by reason, over the time range.",
                    [
                        (
                            "sum by (reason) "
                            f"(increase(stillroom_drift_step_downs_total{{{TASK}}}[{RANGE}]))",
                            "{{reason}}",
                        )
                    ],
                    kind="stat",
                    width=6,
                ),
                Panel(
                    "Feedback and suspect answers",
                    "Over the time range: answers the app rated good or bad (POST "
                    "/admin/exchanges/{id}/feedback), and answers its clients made suspect by "
                    "asking again (retry, reask); bad and suspect ones never train.",
                    [
                        (
                            "sum by (rating) "
                            f"(increase(stillroom_feedback_total{{{TASK}}}[{RANGE}]))",
                            "rated {{rating}}",
                        ),
                        (
                            "sum by (reason) "
                            f"(increase(stillroom_suspect_answers_total{{{TASK}}}[{RANGE}]))",
                            "suspect: {{reason}}",
                        ),
                    ],
                    kind="stat",
                    width=6,
                    text_mode="value_and_name",
                ),
            ],
        ),
        Row(
            "Error budget",
            [
                Panel(
                    "Realised agreement (95% interval)",
                    "Agreement of the audits and shadow answers the live student serves at its "
                    "threshold (the controller's window): the estimate, its two-sided 95% "
                    "Clopper-Pearson interval (low, high), and the one-sided 95% lower bound "
                    "the controller holds at the target.",
                    [
                        (
                            f"max by (figure) (stillroom_realised_agreement{{{TASK}}})",
                            "{{figure}}",
                        )
                    ],
                    unit="percentunit",
                    width=12,
                ),
                Panel(
                    "Confidence threshold",
                    "The threshold the live student answers at (log-probability): the "
                    "admin's, the controller's or the calibrated one.",
                    [(f"max(stillroom_confidence_threshold{{{TASK}}})", "threshold")],
                    width=6,
                ),
                Panel(
                    "Threshold moves",
                    "Moves of the threshold by the controller over the time range: loosen "
                    "(budget left), tighten (agreement's lower bound under the target).",
                    [
                        (
                            "sum by (direction) "
                            f"(increase(stillroom_threshold_moves_total{{{TASK}}}[{RANGE}]))",
                            "{{direction}}",
                        )
                    ],
                    kind="stat",
                    width=6,
                ),
            ],
        ),
        Row(
            "Versions and training",
            [
                Panel(
                    "Live version over time",
                    "Number of the live student version (0: none). A drop is a rollback.",
                    [(f"max(stillroom_task_active_version{{{TASK}}})", "version")],
                    width=6,
                    min=0,
                ),
                Panel(
                    "Versions published",
                    "Versions that passed the gate over the time range, by kind.",
                    [
                        (
                            "sum by (kind) "
                            f"(increase(stillroom_versions_published_total{{{TASK}}}[{RANGE}]))",
                            "{{kind}}",
                        )
                    ],
                    kind="stat",
                    width=6,
                ),
                Panel(
                    "Training runs",
                    "Finished runs over the time range: published, rejected by the gate or "
                    "the student server, or failed.",
                    [
                        (
                            "sum by (outcome) "
                            f"(increase(stillroom_training_runs_total{{{TASK}}}[{RANGE}]))",
                            "{{outcome}}",
                        )
                    ],
                    kind="stat",
                    width=6,
                ),
                Panel(
                    "Training run duration",
                    "Mean duration of the task's runs by outcome, since the distiller started.",
                    [
                        (
                            ratio(
                                f"sum by (outcome) (stillroom_training_run_seconds_sum{{{TASK}}})",
                                "sum by (outcome) "
                                f"(stillroom_training_run_seconds_count{{{TASK}}})",
                            ),
                            "{{outcome}}",
                        )
                    ],
                    unit="s",
                    width=6,
                ),
            ],
        ),
        Row(
            "Money and errors",
            [
                Panel(
                    "Cost and savings per hour",
                    "Cost of what was served and of the teacher calls auditing the student, "
                    "the teacher's price of the student's answers, and the difference saved; "
                    "and the teacher's price of the answers the cache gave again, saved.",
                    [
                        (
                            "sum by (served_by) "
                            f"(rate(stillroom_cost_usd_total{{{TASK}}}[{RATE}])) * 3600",
                            "cost {{served_by}}",
                        ),
                        (
                            f"sum(rate(stillroom_audit_cost_usd_total{{{TASK}}}[{RATE}])) * 3600",
                            "cost of audits (teacher)",
                        ),
                        (
                            "sum(rate(stillroom_counterfactual_cost_usd_total"
                            f"{{{TASK}}}[{RATE}])) * 3600",
                            "teacher price of student answers",
                        ),
                        (
                            f"sum(rate(stillroom_savings_usd_total{{{TASK}}}[{RATE}])) * 3600",
                            "saved by the student",
                        ),
                        (
                            "sum(rate(stillroom_cache_savings_usd_total"
                            f"{{{TASK}}}[{RATE}])) * 3600",
                            "saved by the cache",
                        ),
                    ],
                    unit="currencyUSD",
                ),
                Panel(
                    "Tokens per second",
                    "Prompt (in) and completion (out) tokens by who served them.",
                    [
                        (
                            "sum by (served_by, direction) "
                            f"(rate(stillroom_tokens_total{{{TASK}}}[{RATE}]))",
                            "{{served_by}} {{direction}}",
                        )
                    ],
                ),
                Panel(
                    "Requests that failed",
                    "Error answers and requests cut short, by who served them.",
                    [
                        (
                            "sum by (status, served_by) (rate(stillroom_requests_total"
                            f'{{{TASK}, status!="ok"}}[{RATE}]))',
                            "{{status}} ({{served_by}})",
                        )
                    ],
                    unit="reqps",
                ),
            ],
        ),
    ]


def task_variable() -> dict[str, Any]:
    query = "label_values(stillroom_requests_total, task)"
    return {
        "name": "task",
        "label": "Task",
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": "StandardVariableQuery"},
        "refresh": 2,
        "sort": 1,
        "includeAll": False,
        "multi": False,
        "current": {},
        "options": [],
        "hide": 0,
        "regex": "",
        "skipUrlSync": False,
    }


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, "mappings": panel.mappings}
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    if panel.kind == "stat":
        options: dict[str, Any] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "value_and_name" if len(panel.targets) > 1 else panel.text_mode,
        }
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "blue", "value": None}]}
    elif panel.kind == "state-timeline":
        options = {
            "showValue": "never",
            "mergeValues": True,
            "rowHeight": 0.8,
            "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "single", "sort": "none"},
        }
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "green", "value": None}]}
    else:
        options = {
            "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "refId": chr(ord("A") + n),
                "range": panel.kind != "stat",
                "instant": panel.kind == "stat",
            }
            for n, (expr, legend) in enumerate(panel.targets)
        ],
    }


def layout(rows: list[Row]) -> list[dict[str, Any]]:
    """Rows one under another; a row's panels left to right, wrapping at Grafana's 24
    columns."""
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for row in rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append(panel_json(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return panels


def dashboard(uid: str, title: str, rows: list[Row], *, templated: bool) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["stillroom"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {"list": []},
        "links": [
            {
                "title": "stillroom",
                "type": "dashboards",
                "tags": ["stillroom"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": [task_variable()] if templated else []},
        "panels": layout(rows),
    }


def dashboards() -> dict[str, dict[str, Any]]:
    """File name: dashboard."""
    return {
        "stillroom-overview.json": dashboard(
            "stillroom-overview", "stillroom: overview", overview(), templated=False
        ),
        "stillroom-task.json": dashboard(
            "stillroom-task", "stillroom: task", task(), templated=True
        ),
    }


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2) + "\n"


def main() -> None:
    DASHBOARDS.mkdir(exist_ok=True)
    for name, board in dashboards().items():
        (DASHBOARDS / name).write_text(render(board))
        print(f"wrote {DASHBOARDS / name}")


if __name__ == "__main__":
    main()
