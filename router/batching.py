"""Micro-batches: concurrent requests' blocking work done together, in one worker thread.

Embedding one prompt costs about as much as embedding eight (the model's fixed cost per
call dominates at this size), and every call is a hop to a worker thread. So one call of
``work`` runs at a time, in a worker thread, on every request that came while the
previous one ran (up to ``max_items``; the rest go next): under load requests batch up by
themselves, and a request that finds nothing running goes at once, after waiting
``window_seconds`` for others to join it (0: only those of the same event-loop turn).

A failing call fails every request of its batch (each then falls back to the teacher); a
request cancelled while it waits (its client left) is dropped from the batch, or its
result discarded, without disturbing the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    """Coalesces concurrent :meth:`submit` calls into calls of ``work`` (blocking: it runs
    in a worker thread), which returns one result per item, in order."""

    def __init__(
        self,
        work: Callable[[Sequence[Item]], Sequence[Result]],
        *,
        window_seconds: float = 0.0,
        max_items: int = 16,
    ) -> None:
        self.work = work
        self.window_seconds = window_seconds
        self.max_items = max_items
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._timer: asyncio.Handle | None = None
        self._running: asyncio.Task[None] | None = None
        self.batches = 0  # calls of ``work`` so far

    async def submit(self, item: Item) -> Result:
        """``item``'s result, from a call of ``work`` shared with concurrent submits."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._waiting.append((item, future))
        if self._running is None:  # else it goes when the running call ends
            if len(self._live()) >= self.max_items:
                self._dispatch()
            elif self._timer is None:
                self._timer = (
                    loop.call_later(self.window_seconds, self._dispatch)
                    if self.window_seconds > 0
                    else loop.call_soon(self._dispatch)
                )
        return await future

    def _live(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        """The waiting requests, less those cancelled meanwhile (their clients left)."""
        self._waiting = [(item, future) for item, future in self._waiting if not future.done()]
        return self._waiting

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting = self._live()
        batch, self._waiting = waiting[: self.max_items], waiting[self.max_items :]
        if batch:
            self._running = asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        self.batches += 1
        try:
            results = await asyncio.to_thread(self.work, [item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._running = None
            if self._waiting:
                self._dispatch()
