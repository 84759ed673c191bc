"""Which replica of the student server holds which adapter, as each one's model list says.

vLLM lists every loaded LoRA adapter in ``GET /v1/models`` as a model whose ``parent`` is
the base model (the embedded student server does the same). Each proxy asks every replica
every ``STILLROOM_STUDENT_REFRESH_SECONDS``, again after a failed call to it, and at once
(at most once a second) when no replica is known to hold an adapter a request needs: the
distiller loads a new version's adapter before any policy names it, so its first request
finds it. A replica that cannot be asked holds nothing until it answers; one that
restarted answers with no adapters, and holds nothing until the distiller's adapter sync
loads them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence

import httpx

from router.periodic import Periodic

log = logging.getLogger("stillroom.router")

MODELS_TIMEOUT_SECONDS = 2.0
"""Longest wait for a model list: a live server answers it at once, and a request may be
waiting on it."""

ON_DEMAND_REFRESH_SECONDS = 1.0
"""Least time between two rounds asked for by requests whose adapter no replica holds."""


class ReplicaAdapters:
    """The adapters each replica (by base URL) holds, and the one to ask next for one."""

    def __init__(
        self, urls: Sequence[str], client: httpx.AsyncClient, *, refresh_seconds: float
    ) -> None:
        if not urls:
            raise ValueError("name at least one student server replica")
        self.urls = list(dict.fromkeys(url.rstrip("/").removesuffix("/v1") for url in urls))
        self._client = client
        self._held: dict[str, frozenset[str]] = dict.fromkeys(self.urls, frozenset())
        self._turns: dict[str, int] = {}
        self._asking: dict[str, asyncio.Task[None]] = {}
        self._last_round = -math.inf
        self._periodic = Periodic("student-replicas", refresh_seconds, self.refresh)

    async def start(self) -> None:
        """Ask every replica once, then every ``refresh_seconds`` in the background."""
        await self.refresh()
        self._periodic.start()

    async def close(self) -> None:
        await self._periodic.close()
        for task in self._asking.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._asking.clear()

    def holding(self, adapter: str) -> list[str]:
        """The replicas known to hold ``adapter``."""
        return [url for url in self.urls if adapter in self._held[url]]

    async def pick(self, adapter: str) -> str | None:
        """The next replica holding ``adapter``, in turn; None when none does."""
        holders = self.holding(adapter)
        if not holders and time.monotonic() - self._last_round >= ON_DEMAND_REFRESH_SECONDS:
            await self.refresh()
            holders = self.holding(adapter)
        if not holders:
            return None
        turn = self._turns.get(adapter, 0)
        self._turns[adapter] = turn + 1
        return holders[turn % len(holders)]

    async def refresh(self) -> None:
        """Ask every replica for its model list now; callers at the same time share one
        question per replica."""
        self._last_round = time.monotonic()
        asked = asyncio.gather(*(self._ask(url) for url in self.urls))
        # A request cancelled while it waits must not cancel the round other callers share.
        await asyncio.shield(asked)

    def failed(self, url: str, adapter: str) -> None:
        """A call to ``url`` for ``adapter`` failed: until ``url``'s model list says
        otherwise (it is asked again now, in the background), it does not hold it."""
        held = self._held.get(url)
        if held is None:
            return
        self._held[url] = held - {adapter}
        self._ask(url)

    def _ask(self, url: str) -> asyncio.Task[None]:
        task = self._asking.get(url)
        if task is None or task.done():
            task = asyncio.create_task(self._read(url), name=f"stillroom-models-{url}")
            self._asking[url] = task
        return task

    async def _read(self, url: str) -> None:
        try:
            response = await self._client.get(url + "/v1/models", timeout=MODELS_TIMEOUT_SECONDS)
            response.raise_for_status()
            cards = response.json()["data"]
            held = frozenset(str(card["id"]) for card in cards if card.get("parent"))
        except (httpx.HTTPError, ValueError, LookupError, TypeError, AttributeError) as exc:
            if self._held[url]:
                log.warning("student server at %s is taken to hold no adapter: %r", url, exc)
            held = frozenset()
        self._held[url] = held
