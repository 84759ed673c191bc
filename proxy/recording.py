"""Turning a finished request into an exchange for the store and into metrics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.metrics import Metrics
from core.settings import Settings
from core.tables import ExchangeCreate
from core.tasks import TaskRef
from proxy.capture import CaptureWriter


@dataclass(slots=True)
class ExchangeRecorder:
    """Collects what one chat completion request did, then records it once."""

    settings: Settings
    metrics: Metrics
    capture: CaptureWriter | None
    task: TaskRef
    payload: dict[str, Any]
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    upstream_seconds: float = 0.0
    recorded: bool = False
    served_by: str = "teacher"  # fallback when the student was tried first
    student_version: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # the exchange's, once stored
    # Called with a complete answer (status ok), e.g. to schedule shadow scoring.
    on_answer: Callable[[dict[str, Any]], None] | None = None

    def record(
        self,
        *,
        status: str,
        http_status: int,
        response: dict[str, Any] | None,
        first_chunk_seconds: float | None = None,
    ) -> None:
        """Count the request in the metrics and queue its exchange for the store.

        ``status`` is ``ok`` (a complete answer), ``error`` (an error answer) or
        ``aborted`` (cut short by the client or the teacher: never a training pair).
        """
        if self.recorded:
            return
        self.recorded = True
        served_by = self.served_by
        latency = time.perf_counter() - self.started
        model = str(self.payload.get("model", ""))
        usage = (response or {}).get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        cost = self._cost(model, usage, served_by)
        stream_label = "true" if self.stream else "false"
        task = self.task.name

        metrics = self.metrics
        metrics.requests.labels(task=task, served_by=served_by, status=status).inc()
        metrics.request_seconds.labels(served_by=served_by, stream=stream_label).observe(latency)
        if status == "ok":
            metrics.overhead_seconds.labels(stream=stream_label).observe(
                max(0.0, (first_chunk_seconds or latency) - self.upstream_seconds)
            )
        if prompt_tokens:
            metrics.tokens.labels(task=task, served_by=served_by, direction="in").inc(prompt_tokens)
        if completion_tokens:
            metrics.tokens.labels(task=task, served_by=served_by, direction="out").inc(
                completion_tokens
            )
        if cost is not None:
            metrics.cost_usd.labels(task=task, served_by=served_by).inc(cost)
        elif usage:
            metrics.unpriced.labels(model=model).inc()
        if served_by == "student" and usage:
            counterfactual = self._cost(model, usage, "teacher")
            if counterfactual is not None:
                metrics.counterfactual_cost_usd.labels(task=task).inc(counterfactual)
                metrics.savings_usd.labels(task=task).inc(counterfactual - (cost or 0.0))
        if status == "ok" and response is not None and self.on_answer is not None:
            self.on_answer(response)

        if self.capture is None:
            return
        choices = (response or {}).get("choices") or []
        finish_reason = choices[0].get("finish_reason") if choices else None
        self.capture.submit(
            ExchangeCreate.model_construct(
                id=self.id,
                task=task,
                task_derived=self.task.derived,
                created_at=self.created_at,
                served_by=served_by,
                status=status,
                http_status=http_status,
                model=model or None,
                stream=self.stream,
                request=self.payload,
                response=response,
                finish_reason=finish_reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost_usd=cost,
                latency_ms=latency * 1000,
                first_chunk_ms=first_chunk_seconds * 1000
                if first_chunk_seconds is not None
                else None,
            )
        )

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``X-Stillroom-*`` response headers: who served, the task, the student version."""
        own = [
            (b"x-stillroom-served-by", self.served_by.encode()),
            (b"x-stillroom-task", self.task.name.encode()),
        ]
        if self.student_version is not None:
            own.append((b"x-stillroom-student-version", self.student_version.encode()))
        return own

    def _cost(self, model: str, usage: dict[str, Any], served_by: str) -> float | None:
        if not usage:
            return None
        price = (
            self.settings.student_price
            if served_by == "student"
            else (self.settings.price_of(model))
        )
        if price is None:
            return None
        details = usage.get("prompt_tokens_details") or {}
        return price.cost(
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            int(details.get("cached_tokens") or 0),
        )
