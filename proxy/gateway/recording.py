"""Turning a finished exchange into a row for the store and into metrics.

Who served an exchange is the routing outcome's to say: :meth:`ExchangeRecorder.record`
takes it as an argument. Only client exchanges are requests: an audit's teacher call is
stored (``origin="audit"``) and its cost counted as audit spend, and it appears in none of
the request metrics (count, latency, overhead, tokens, cost of what was served, savings).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from core.metrics import Metrics
from core.pii import scrub_document
from core.request_identity import end_user, request_hash
from core.settings import Settings
from core.tables import Dialect, ExchangeCreate
from core.tasks import TaskRef
from proxy.gateway.capture import CaptureWriter
from router.reasons import ServedBy

# Status nginx uses for "client closed request"; nobody is left to read it.
CLIENT_CLOSED = 499
# The response header naming the exchange an answer was recorded as (ExchangeRecorder.id):
# what POST /admin/exchanges/{id}/feedback takes.
EXCHANGE_ID_HEADER = "x-stillroom-exchange-id"

Status = Literal["ok", "error", "aborted"]
Origin = Literal["client", "audit"]  # the exchanges the proxy makes (``import`` it does not)


@dataclass(slots=True)
class ExchangeRecorder:
    """Collects what one call to the teacher or the student did, then records it once.

    ``payload`` is the request in Chat Completions form, which metrics, pricing and the
    store's ``request`` read; for another ``dialect`` it is the canonical view of
    ``client_request``, the body as the client sent it (see ``core.dialects``).
    """

    settings: Settings
    metrics: Metrics
    capture: CaptureWriter | None
    task: TaskRef
    payload: dict[str, Any]
    stream: bool
    origin: Origin = "client"
    dialect: Dialect = "chat"
    client_request: dict[str, Any] | None = None
    client_key_hash: str | None = None  # of the key the client presented (core.tenants)
    route_key: str | None = None  # its X-Stillroom-Route-Key
    started: float = field(default_factory=time.perf_counter)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    recorded: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # the exchange's, once stored

    def record(
        self,
        *,
        served_by: ServedBy,
        status: Status,
        http_status: int,
        response: dict[str, Any] | None,
        upstream_seconds: float = 0.0,
        first_chunk_seconds: float | None = None,
        client_response: dict[str, Any] | None = None,
        response_id: str | None = None,
        version_id: str | None = None,
    ) -> None:
        """Count the exchange in the metrics and queue it for the store (once: later calls
        do nothing).

        ``status`` is ``ok`` (a complete answer), ``error`` (an error answer) or
        ``aborted`` (cut short by the client or the teacher: never a training pair).
        ``upstream_seconds``: time spent waiting on the teacher or the student, which is
        not the proxy's overhead. For another dialect than chat, ``response`` is the
        answer's chat.completion view, ``client_response`` the answer as the client got it
        and ``response_id`` the id the client saw. ``version_id``: the student version
        that answered, if one did.
        """
        if self.recorded:
            return
        self.recorded = True
        latency = time.perf_counter() - self.started
        model = str(self.payload.get("model", ""))
        usage = (response or {}).get("usage") or {}
        cost = self._cost(model, usage, served_by)
        if self.origin == "client":
            self._count_request(served_by, status, model, usage, cost, latency)
            if status == "ok":
                self.metrics.overhead_seconds.labels(stream=self._stream_label).observe(
                    max(0.0, (first_chunk_seconds or latency) - upstream_seconds)
                )
        elif cost is not None:
            self.metrics.audit_cost_usd.labels(task=self.task.name).inc(cost)
        if self.capture is None:
            return
        choices = (response or {}).get("choices") or []
        request, client_request = self.payload, self.client_request
        if self.settings.scrub_pii_at_capture:
            # Before the row exists, so the store never holds what the scrubber finds. The
            # hash is of what is stored: a scrubbed answer is never found by the original.
            request, client_request = scrub_document(request), scrub_document(client_request)
            response, client_response = scrub_document(response), scrub_document(client_response)
        self.capture.submit(
            ExchangeCreate.model_construct(
                id=self.id,
                task=self.task.name,
                task_derived=self.task.derived,
                created_at=self.created_at,
                served_by=served_by,
                origin=self.origin,
                status=status,
                http_status=http_status,
                model=model or None,
                stream=self.stream,
                request=request,
                response=response,
                dialect=self.dialect,
                client_request=client_request,
                client_response=client_response,
                response_id=response_id,
                tenant=self.task.tenant,
                client_key_hash=self.client_key_hash,
                end_user=end_user(self.payload, self.route_key),
                request_hash=request_hash(request),
                version_id=version_id,
                finish_reason=choices[0].get("finish_reason") if choices else None,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
                cost_usd=cost,
                latency_ms=latency * 1000,
                first_chunk_ms=first_chunk_seconds * 1000
                if first_chunk_seconds is not None
                else None,
            )
        )

    @contextmanager
    def aborted_if_cancelled(self, served_by: ServedBy) -> Iterator[None]:
        """Record the exchange as aborted (nobody is left to read an answer) if what runs
        inside is cancelled: the client went away while ``served_by`` was answering."""
        try:
            yield
        except asyncio.CancelledError:
            self.record(
                served_by=served_by, status="aborted", http_status=CLIENT_CLOSED, response=None
            )
            raise

    @property
    def _stream_label(self) -> str:
        return "true" if self.stream else "false"

    def _count_request(
        self,
        served_by: ServedBy,
        status: Status,
        model: str,
        usage: dict[str, Any],
        cost: float | None,
        latency: float,
    ) -> None:
        metrics, task = self.metrics, self.task.name
        metrics.requests.labels(task=task, served_by=served_by, status=status).inc()
        metrics.request_seconds.labels(served_by=served_by, stream=self._stream_label).observe(
            latency
        )
        for direction, key in (("in", "prompt_tokens"), ("out", "completion_tokens")):
            if usage.get(key):
                metrics.tokens.labels(task=task, served_by=served_by, direction=direction).inc(
                    usage[key]
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
        if served_by == "cache" and usage:  # the teacher's price of the answer it did not give
            avoided = self._cost(model, usage, "teacher")
            if avoided is not None:
                metrics.cache_savings_usd.labels(task=task).inc(avoided)

    def _cost(self, model: str, usage: dict[str, Any], served_by: ServedBy) -> float | None:
        if served_by == "cache":  # answered from the store: nobody was paid
            return 0.0
        if not usage:
            return None
        price = (
            self.settings.student_price if served_by == "student" else self.settings.price_of(model)
        )
        if price is None:
            return None
        details = usage.get("prompt_tokens_details") or {}
        return price.cost(
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            int(details.get("cached_tokens") or 0),
        )
