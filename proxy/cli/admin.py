"""Admin commands of the CLI. Each is a client of the admin API of a running stillroom
(``--url``, default ``$STILLROOM_URL`` or http://127.0.0.1:8000)."""

from __future__ import annotations

import math
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from core.evaluation import VersionEvaluation

UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="STILLROOM_URL", help="Base URL of the running stillroom proxy."),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="STILLROOM_ADMIN_TOKEN", help="Admin bearer token."),
]
DEFAULT_URL = "http://127.0.0.1:8000"
console = Console()


class AdminClient:
    def __init__(self, url: str, token: str | None) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60)

    def call(self, method: str, path: str, json: Any = None, **options: Any) -> Any:
        """The JSON answer of one admin API call (``options`` go to httpx); on an error
        answer, or none, the command fails with its message."""
        try:
            response = self.http.request(method, path, json=json, **options)
        except httpx.HTTPError as exc:
            _fail(f"cannot reach stillroom at {self.http.base_url}: {exc}")
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            _fail(f"{response.status_code}: {message}")
        return response.json()


def _fail(message: str) -> None:
    console.print(f"[red]stillroom: {message}[/red]")
    raise typer.Exit(1)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _estimate(figure: dict[str, Any] | None) -> str:
    """An agreement measured on a sample, with its 95% interval and sample size."""
    if not figure or figure.get("agreement") is None:
        return "-"
    low, high = figure["low"], figure["high"]
    return f"{figure['agreement']:.1%} ({low:.1%}-{high:.1%}, n {figure['pairs']})"


def _task_threshold(task: dict[str, Any]) -> str:
    """The threshold the live version answers at, and whose it is."""
    figure = task.get("threshold") or {}
    if figure.get("effective") is None:
        return "-"
    return f"{figure['effective']:.3f} ({figure['source']})"


def tasks(
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Only this tenant's tasks.")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List tasks: tenant, traffic, answer shape, mode, live version and its agreement."""
    query = f"?{urlencode({'tenant': tenant})}" if tenant is not None else ""
    data = AdminClient(url, token).call("GET", f"/admin/tasks{query}")["data"]
    table = Table(
        "task",
        "tenant",
        "shape",
        "exchanges",
        "on student",
        "mode",
        "cutover",
        "live version",
        "held-out",
        "shadow (95% CI)",
        "audit (95% CI)",
        "threshold",
        "cost",
        "saved",
        "last change",
    )
    for task in data:
        version = task["active_version"]
        live = task["live_agreement"] or {}
        total = task["exchanges"]["total"] or 1
        table.add_row(
            task["name"],
            task.get("tenant", "default"),
            _shape(task),
            str(task["exchanges"]["total"]),
            _percent(task["served_by"].get("student", 0) / total),
            task["mode"],
            f"{task['cutover_percent']:g}%",
            f"v{version['number']} ({version['kind']})" if version else "-",
            _percent(version["retained_agreement"]) if version else "-",
            _estimate(live.get("shadow")),
            _estimate(live.get("audit")),
            _task_threshold(task),
            f"${task['cost_usd']:.4f}",
            f"${task['savings_usd']:.4f}",
            _last_change(task.get("last_transition")),
        )
    console.print(table)


def _last_change(transition: dict[str, Any] | None) -> str:
    """Who last changed the task's mode or cutover, and how long ago."""
    if not transition:
        return "-"
    at = datetime.fromisoformat(transition["created_at"])
    at = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return f"{transition['cause']}, {_ago((datetime.now(UTC) - at).total_seconds())}"


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} d ago"


def _shape(task: dict[str, Any]) -> str:
    shape = task.get("shape")
    if shape == "label" and task.get("label_count"):
        return f"label ({task['label_count']})"
    fields = task.get("field_kinds")
    if shape == "json" and fields:
        if not fields.get("extractor"):
            return "json (not extractor-shaped)"
        kinds = Counter(f["kind"] for f in (fields.get("fields") or {}).values())
        counted = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        return f"json (extractor: {counted})"
    return shape or "-"


def _threshold(version: dict[str, Any]) -> str:
    """A log-probability; a classifier's is also shown as the probability it means."""
    threshold = version["confidence_threshold"]
    if threshold is None:
        return "-"
    if version["kind"] == "classifier":
        return f"{threshold:.3f} (p {math.exp(threshold):.2f})"
    return f"{threshold:.3f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _milliseconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def versions(task: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """List a task's student versions with their evaluation: held-out agreement, the share
    each serves at the target agreement, training time and time per request (the figures
    the tournament between student kinds was decided on), and why one was not published."""
    data = AdminClient(url, token).call("GET", f"/admin/tasks/{task}/versions")["data"]
    table = Table(
        "version",
        "kind",
        "state",
        "metric",
        "agreement",
        "base",
        "threshold",
        "share at target",
        "agreement there",
        "trained in",
        "per request",
        "why",
    )
    for v in data:
        evaluation = VersionEvaluation.model_validate(v.get("evaluation") or {})
        table.add_row(
            f"v{v['number']}",
            v["kind"],
            v["state"],
            v["metric"] or "-",
            _percent(v["agreement"]),
            _percent(v["base_agreement"]),
            _threshold(v),
            _percent(v["retained_share"]),
            _percent(v["retained_agreement"]),
            _seconds(evaluation.training_seconds),
            _milliseconds(evaluation.latency_p50_ms),
            v["reason"] or "",
        )
    console.print(table)


def train(
    task: str,
    wait: Annotated[bool, typer.Option(help="Follow the run with a progress bar.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Queue a training run for TASK (the distiller picks it up)."""
    client = AdminClient(url, token)
    run = client.call("POST", f"/admin/tasks/{task}/train")
    console.print(f"training run {run['id']} for {task}: {run['state']}")
    if wait:
        run = _follow(client, task, run["id"])
        if run["state"] == "failed":
            _fail(f"training failed: {run['error']}")
        version = client.call("GET", f"/admin/tasks/{task}/versions")["data"]
        match = [v for v in version if v["id"] == run["version_id"]]
        if match:
            v = match[0]
            console.print(
                f"v{v['number']} {v['state']}: held-out agreement {_percent(v['agreement'])} "
                f"(base {_percent(v['base_agreement'])}), {_percent(v['retained_share'])} "
                f"of traffic at {_percent(v['retained_agreement'])}"
                + (f"; {v['reason']}" if v["reason"] else "")
            )


def _follow(client: AdminClient, task: str, run_id: str) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("queued", total=None, detail="")
        while True:
            run: dict[str, Any] = client.call("GET", f"/admin/tasks/{task}/runs/{run_id}")
            detail = f"loss {run['loss']:.3f}" if run["loss"] is not None else ""
            progress.update(
                bar,
                description=run["phase"] or run["state"],
                total=run["total_steps"] or None,
                completed=run["step"],
                detail=detail,
            )
            if run["state"] in ("succeeded", "failed"):
                return run
            time.sleep(1.0)


def publish(
    task: str,
    version: Annotated[str, typer.Argument(help="Version number (3 or v3) or id.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Publish VERSION of TASK, overriding the publish gate and the tournament."""
    published = AdminClient(url, token).call(
        "POST", f"/admin/tasks/{task}/versions/{version}/publish"
    )
    console.print(f"{task}: v{published['number']} ({published['kind']}) is live")


def rollback(task: str, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Re-activate the version published before TASK's live one."""
    version = AdminClient(url, token).call("POST", f"/admin/tasks/{task}/rollback")
    console.print(f"{task}: v{version['number']} is live again")


def export(
    task: str,
    out: Annotated[Path, typer.Option("--out", help="JSONL file to write.")],
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Write TASK's curated pairs as OpenAI fine-tuning JSONL."""
    client = AdminClient(url, token)
    lines = 0
    with client.http.stream("GET", f"/admin/tasks/{task}/export") as response:
        if response.status_code >= 400:
            response.read()
            _fail(f"{response.status_code}: {response.text}")
        with out.open("wb") as file:
            for chunk in response.iter_bytes():
                lines += chunk.count(b"\n")
                file.write(chunk)
    console.print(f"wrote {lines} examples to {out}")


def rollout(
    task: str,
    mode: Annotated[str | None, typer.Option(help="off (teacher only), shadow, or live.")] = None,
    percent: Annotated[
        float | None, typer.Option(help="Share of the task's traffic the student serves.")
    ] = None,
    reason: Annotated[
        str | None, typer.Option(help="Why, kept with the change in the task's history.")
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Set TASK's mode and cutover percent, e.g. --mode live --percent 25."""
    body: dict[str, Any] = {}
    if mode is not None:
        body["mode"] = mode
    if percent is not None:
        body["cutover_percent"] = percent
    if not body:
        _fail("say --mode and/or --percent")
    if reason is not None:
        body["reason"] = reason
    result = AdminClient(url, token).call("PATCH", f"/admin/tasks/{task}", json=body)
    console.print(f"{task}: {result['mode']}, {result['cutover_percent']:g}% on the student")


def register(app: typer.Typer) -> None:
    # export is registered by proxy.cli.transfer, which adds the model formats to it.
    for command in (tasks, versions, train, rollout, publish, rollback):
        app.command()(command)
