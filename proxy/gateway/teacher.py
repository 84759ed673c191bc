"""The teacher client: one pooled ``httpx.AsyncClient`` and the mapping of its failures."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterator
from contextlib import contextmanager

import httpx

from core.errors import TeacherError, TeacherTimeoutError, TeacherUnreachableError
from core.metrics import Metrics
from core.settings import Settings
from proxy.gateway.headers import RawHeaders

CHAT_PATH = "/v1/chat/completions"


def create_teacher_http_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The pooled client for all teacher calls. ``transport`` lets tests inject one."""
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(
            connect=settings.teacher_connect_timeout,
            read=settings.teacher_read_timeout,
            write=settings.teacher_read_timeout,
            pool=settings.teacher_connect_timeout,
        ),
        limits=httpx.Limits(
            max_connections=settings.teacher_max_connections,
            max_keepalive_connections=min(settings.teacher_max_connections, 200),
            keepalive_expiry=30.0,
        ),
        follow_redirects=False,
    )


class Teacher:
    """Sends requests to the teacher API and turns transport failures into
    ``TeacherUnreachableError`` (502) and ``TeacherTimeoutError`` (504)."""

    def __init__(self, *, base_url: str, client: httpx.AsyncClient, metrics: Metrics) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.metrics = metrics

    def url(self, path: str, query: bytes = b"") -> str:
        """The teacher URL of a client path under ``/v1``."""
        suffix = path[len("/v1") :] if path.startswith("/v1") else path
        url = self.base_url + suffix
        return f"{url}?{query.decode('latin-1')}" if query else url

    async def send(
        self,
        method: str,
        path: str,
        *,
        headers: RawHeaders,
        content: bytes | AsyncIterable[bytes] | None = None,
        query: bytes = b"",
    ) -> httpx.Response:
        """Send a request and return as soon as the response headers arrive; the caller
        reads (or streams) the body and must close the response."""
        request = self.client.build_request(
            method, self.url(path, query), headers=headers, content=content
        )
        with self.failures_mapped():
            return await self.client.send(request, stream=True)

    async def read(self, response: httpx.Response) -> bytes:
        """The whole body of a response from :meth:`send`, which is then closed."""
        try:
            with self.failures_mapped():
                return await response.aread()
        finally:
            await response.aclose()

    @contextmanager
    def failures_mapped(self) -> Iterator[None]:
        """Turn httpx's transport errors into stillroom's teacher errors."""
        try:
            yield
        except httpx.TimeoutException as exc:
            self.metrics.teacher_failures.labels(reason="timeout").inc()
            raise TeacherTimeoutError(
                f"the teacher at {self.base_url} did not answer in time ({type(exc).__name__})"
            ) from exc
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.NetworkError) as exc:
            self.metrics.teacher_failures.labels(reason="unreachable").inc()
            raise TeacherUnreachableError(
                f"the teacher at {self.base_url} could not be reached: {exc or type(exc).__name__}"
            ) from exc
        except httpx.HTTPError as exc:
            self.metrics.teacher_failures.labels(reason="unreachable").inc()
            raise TeacherError(f"the teacher request failed: {exc}") from exc
