"""The capture writer: exchanges go from the request path to the store in batches.

``submit`` never blocks and never fails. Exchanges wait in a bounded in-memory queue; a
background task writes them in batches. While the store is unreachable (or the queue is
full) they are appended to a spill file in the data folder, and replayed once the store
answers again; spill files left by a crashed process are replayed on the next start.
Writes are idempotent (exchange ids are unique), so a replay never duplicates a row. Rows
the store refuses as data are kept in a ``rejected`` file, counted, and not retried.

Deleting exchanges (``DELETE /admin/exchanges``) also removes them from the spill and
rejected files of the folder (:meth:`CaptureWriter.purge`). Every write to a spill file,
its replay and its purge hold an exclusive ``flock`` on it, so that no line is appended to
a file being purged, and no spilled row a purge removes can reach the store afterwards.

A store whose schema does not fit this build (a missing table or column: it was not
migrated, or a newer stillroom changed it) is not an outage: the writer logs the cause
once, counts each failed write, keeps spilling and retrying, and says so in
:attr:`CaptureWriter.schema_fault`, which makes ``/readyz`` fail with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.deletion import ExchangeFilter
from core.metrics import Metrics
from core.store import create_tables, insert_exchanges, schema_fault
from core.tables import ExchangeCreate
from proxy.gateway.retries import RetryRules, mark_suspects

log = logging.getLogger("stillroom.capture")

WRITE_ROWS = 32  # rows a transaction: about a millisecond of the GIL


class CaptureWriter:
    """Batches exchanges into the store, spilling to disk while it is away."""

    def __init__(
        self,
        *,
        engine: Engine,
        spill_dir: Path,
        metrics: Metrics,
        queue_size: int = 10_000,
        batch_size: int = 256,
        flush_seconds: float = 0.25,
        retry_seconds: float = 2.0,
        retries: RetryRules | None = None,
    ) -> None:
        self.engine = engine
        self.retries = retries  # what makes a stored answer suspect (proxy.gateway.retries)
        self.spill_dir = spill_dir
        self.metrics = metrics
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.retry_seconds = retry_seconds
        self._queue: asyncio.Queue[ExchangeCreate] = asyncio.Queue(maxsize=queue_size)
        self._spill_path = spill_dir / f"exchanges-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._rejected_path = spill_dir / "rejected.jsonl"
        self._retry_at = 0.0  # monotonic time before which the store is presumed down
        self._schema_ready = False
        self._schema_fault: str | None = None  # why the store's schema refused the last write
        self._task: asyncio.Task[None] | None = None
        self._batch: list[ExchangeCreate] = []  # taken from the queue, not yet written

    @property
    def store_up(self) -> bool:
        return time.monotonic() >= self._retry_at

    @property
    def schema_fault(self) -> str | None:
        """Why the store's schema refused the latest write, until a write succeeds."""
        return self._schema_fault

    def submit(self, exchange: ExchangeCreate) -> None:
        """Queue an exchange for the store. Never blocks; spills when the queue is full."""
        try:
            self._queue.put_nowait(exchange)
        except asyncio.QueueFull:
            self._spill([exchange])
        self.metrics.capture_queue_depth.set(self._queue.qsize())

    async def start(self) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._run(), name="stillroom-capture-writer")

    async def close(self, drain_seconds: float = 10.0) -> None:
        """Stop the background task and write (or spill) everything still queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        batch = self._batch + self._take_queued(self._queue.qsize())
        self._batch = []
        if not batch:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(self._write_or_spill, batch), drain_seconds)
        except TimeoutError:
            self._spill(batch)

    async def flush(self) -> None:
        """Wait until everything submitted so far has been written or spilled."""
        await self._queue.join()

    async def _run(self) -> None:
        await asyncio.to_thread(self._replay_spills)
        while True:
            self._batch = batch = await self._next_batch()
            try:
                if batch:
                    await asyncio.to_thread(self._write_or_spill, batch)
                if self.store_up and self._spill_files():
                    await asyncio.to_thread(self._replay_spills)
            except Exception:  # the writer must outlive any single failure
                log.exception("capture writer failed on a batch; it was spilled")
                self._spill(batch)
            finally:
                self._batch = []
                for _ in batch:
                    self._queue.task_done()
                self.metrics.capture_queue_depth.set(self._queue.qsize())

    async def _next_batch(self) -> list[ExchangeCreate]:
        """Up to ``batch_size`` exchanges, waiting at most ``flush_seconds`` after the first
        (or ``retry_seconds`` for nothing, so spills are retried on a quiet proxy)."""
        try:
            first = await asyncio.wait_for(self._queue.get(), self.retry_seconds)
        except TimeoutError:
            return []
        # Kept on the writer while it fills, so that close() finds it if cancelled here.
        self._batch = batch = [first]
        deadline = time.monotonic() + self.flush_seconds
        while True:
            batch.extend(self._take_queued(self.batch_size - len(batch), done=False))
            remaining = deadline - time.monotonic()
            if len(batch) >= self.batch_size or remaining <= 0:
                return batch
            # Poll in short sleeps: one timer per batch step, not one per exchange.
            await asyncio.sleep(min(remaining, 0.05))

    def _take_queued(self, limit: int, *, done: bool = True) -> list[ExchangeCreate]:
        taken: list[ExchangeCreate] = []
        while len(taken) < limit:
            try:
                taken.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
            if done:
                self._queue.task_done()
        return taken

    # Everything below runs in a worker thread.

    def _write_or_spill(self, batch: Sequence[ExchangeCreate]) -> None:
        if not self.store_up:
            self._spill(batch)
            return
        try:
            # In short transactions: encoding and binding the rows holds the GIL (about 30
            # us a row), and the event loop waits for it; a commit lets it go.
            for start in range(0, len(batch), WRITE_ROWS):
                self._write(batch[start : start + WRITE_ROWS])
        except Exception as exc:
            if not self._store_failed(exc, len(batch)):
                raise
            self._spill(batch)  # rows already written are skipped on replay

    def _store_failed(self, exc: Exception, count: int, *, replay: bool = False) -> bool:
        """Take note of a write the store failed, on its schema or by being unreachable,
        and wait ``retry_seconds`` before the next; False for any other error."""
        fault = schema_fault(exc)
        if fault is not None:
            self.metrics.capture_schema_errors.inc()
            if fault != self._schema_fault:
                log.error(
                    "the store's schema does not fit this build of stillroom; exchanges are "
                    "spilled to %s until it does (`stillroom db current` tells more): %s",
                    self.spill_dir,
                    fault,
                )
            self._schema_fault = fault
            self._schema_ready = False  # check (and migrate) the schema again on the retry
        elif isinstance(exc, sa.exc.OperationalError):
            if not replay:
                log.warning("store unreachable, spilling %d exchanges: %s", count, exc.orig)
            self.metrics.store_up.set(0)
        else:
            return False
        self._retry_at = time.monotonic() + self.retry_seconds
        return True

    def _write(self, batch: Sequence[ExchangeCreate]) -> None:
        """Insert a batch; if the store refuses it as data, find and set aside the rows
        it refuses, one by one, and keep the rest."""
        if not self._schema_ready:
            create_tables(self.engine)  # the store may have been down at start-up
            self._schema_ready = True
        try:
            insert_exchanges(engine=self.engine, exchanges=batch)
        except sa.exc.DBAPIError as exc:
            if isinstance(exc, sa.exc.OperationalError) or schema_fault(exc) is not None:
                raise  # the store's fault, not the rows'
            if len(batch) == 1:
                self._reject(batch[0])
                return
            for exchange in batch:
                self._write([exchange])
            return
        self.metrics.capture_written.inc(len(batch))
        self.metrics.store_up.set(1)
        if self.retries is not None:  # here, in the writer's thread: never on a request's path
            mark_suspects(self.engine, batch, self.retries, self.metrics)
        if self._schema_fault is not None:
            log.info("the store's schema fits again; writing exchanges")
            self._schema_fault = None

    def _reject(self, exchange: ExchangeCreate) -> None:
        log.error("store refused exchange %s; kept in %s", exchange.id, self._rejected_path)
        with _locked(self._rejected_path, "ab") as file:
            file.write(exchange.model_dump_json().encode() + b"\n")
        self.metrics.capture_rejected.inc()

    def _spill(self, batch: Sequence[ExchangeCreate]) -> None:
        if not batch:
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self._spill_path, "ab") as file:
            file.write(b"".join(e.model_dump_json().encode() + b"\n" for e in batch))
        self.metrics.capture_spilled.inc(len(batch))

    def _spill_files(self) -> list[Path]:
        """Spill files of this process and of processes that are gone."""
        files = []
        for path in sorted(self.spill_dir.glob("exchanges-*.jsonl*")):
            pid = int(path.name.split("-")[1])
            if pid == os.getpid() or not _alive(pid):
                files.append(path)
        return files

    def _replay_spills(self) -> None:
        """Write spilled exchanges to the store, file by file; a file is removed only
        once all of it is stored."""
        for path in self._spill_files():
            if not path.name.endswith(".replaying"):
                # New spills go to a fresh file while this one is replayed.
                claimed = path.with_name(path.name + ".replaying")
                path.rename(claimed)
                path = claimed
            # Locked from read to unlink: a purge waits until these rows are in the store.
            with _locked(path, "rb"):
                exchanges = self._read_spill(path)
                for start in range(0, len(exchanges), self.batch_size):
                    batch = exchanges[start : start + self.batch_size]
                    try:
                        self._write(batch)
                    except Exception as exc:
                        if not self._store_failed(exc, len(batch), replay=True):
                            raise
                        return
                path.unlink()
            log.info("replayed %d spilled exchanges from %s", len(exchanges), path.name)

    def purge(self, selection: ExchangeFilter) -> int:
        """Remove the exchanges ``selection`` selects from every spill file in the folder
        (any process's) and from the rejected file; how many lines went. A line that is not
        an exchange (cut by a crash) is kept: nothing says whose it is."""
        purged = 0
        for path in [*sorted(self.spill_dir.glob("exchanges-*.jsonl*")), self._rejected_path]:
            # A file a replay claimed since the glob has its new name.
            for candidate in (path, path.with_name(path.name + ".replaying")):
                with contextlib.suppress(FileNotFoundError), _locked(candidate, "r+b") as file:
                    purged += _purge_lines(file, selection)
                    break
        if purged:
            log.info("purged %d deleted exchanges from spill files in %s", purged, self.spill_dir)
        return purged

    def _read_spill(self, path: Path) -> list[ExchangeCreate]:
        exchanges = []
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                exchanges.append(ExchangeCreate.model_validate_json(line))
            except ValueError:
                # A line cut by a crash mid-write, or not an exchange: kept, never retried.
                with _locked(self._rejected_path, "ab") as file:
                    file.write(line + b"\n")
                self.metrics.capture_rejected.inc()
        return exchanges


@contextlib.contextmanager
def _locked(path: Path, mode: str) -> Iterator[IO[bytes]]:
    """``path`` open in ``mode`` under an exclusive ``flock`` (across processes)."""
    with path.open(mode) as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        try:
            yield file
        finally:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _purge_lines(file: IO[bytes], selection: ExchangeFilter) -> int:
    """Rewrite ``file`` without the exchanges ``selection`` selects; how many went."""
    kept, lines = [], file.read().splitlines()
    for line in lines:
        try:
            if selection.matches(ExchangeCreate.model_validate_json(line)):
                continue
        except ValueError:
            pass
        kept.append(line)
    if len(kept) < len(lines):
        # In place, not a new file: a process appending to it holds this inode.
        file.seek(0)
        file.truncate()
        file.write(b"".join(line + b"\n" for line in kept))
    return len(lines) - len(kept)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
