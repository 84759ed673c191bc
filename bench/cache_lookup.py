"""What the exact cache costs a request: its one store lookup
(``proxy.gateway.cache.find_cached``), timed on a store of many exchanges.

The store holds ``--exchanges`` chat exchanges over 20 tasks and 7 client keys, most of
them answers to 5,000 distinct requests (each stored about 40 times), and one hot
request stored once every 400 exchanges (500 times in 200,000). Three lookups are timed,
each ``--repeats`` times: a miss, a hit on a usual request, and a hit on the hot one
(the lookup reads every stored answer to the request it looks up, so a request stored
many times costs more). An empty query in a session (``SELECT 1``) is the floor: what any
store round trip costs.

Run: ``.venv/bin/python bench/cache_lookup.py [--exchanges N] [--database-url URL]``
(default: a fresh SQLite file in a temporary folder).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, and bench/router.py would
# shadow the router package that the cache imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import argparse
import hashlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from core.store import create_store_engine, create_tables, insert_exchanges
from core.tables import ExchangeCreate
from proxy.gateway.cache import CacheKey, find_cached

DISTINCT_REQUESTS = 5000
HOT_EVERY = 400
WINDOW = 10**9  # every stored answer is inside the window: the costliest case
BATCH = 5000


def digest(value: int) -> str:
    return hashlib.sha256(str(value).encode()).hexdigest()


HOT = digest(-1)
ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "x" * 400},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 50, "completion_tokens": 100, "total_tokens": 150},
}
REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "y" * 400}]}


def exchange(number: int, total: int, now: datetime) -> ExchangeCreate:
    hot = number % HOT_EVERY == 0
    return ExchangeCreate.model_construct(
        id=uuid.uuid4().hex,
        task="task-0" if hot else f"task-{number % 20}",
        task_derived=False,
        created_at=now - timedelta(seconds=total - number),
        served_by="teacher" if number % 3 else "cache",
        origin="client",
        status="ok",
        http_status=200,
        model="gpt-4o-mini",
        stream=False,
        request=REQUEST,
        response=ANSWER,
        dialect="chat",
        tenant="default",
        client_key_hash=digest(number % 7),
        request_hash=HOT if hot else digest(number % DISTINCT_REQUESTS),
        prompt_tokens=50,
        completion_tokens=100,
        cost_usd=0.0001,
        latency_ms=100.0,
    )


def fill(engine: Engine, total: int) -> None:
    now = datetime.now(UTC)
    for start in range(0, total, BATCH):
        batch = [exchange(n, total, now) for n in range(start, min(total, start + BATCH))]
        insert_exchanges(engine=engine, exchanges=batch)


def timed(call: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median and p99 of ``call``, in milliseconds."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    times.sort()
    return statistics.median(times) * 1000, times[int(len(times) * 0.99)] * 1000


def lookup(engine: Engine, key: CacheKey) -> Callable[[], Any]:
    return lambda: find_cached(engine, key, window_seconds=WINDOW)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exchanges", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    engine = create_store_engine(url)
    create_tables(engine)
    began = time.perf_counter()
    fill(engine, args.exchanges)
    print(f"{args.exchanges} exchanges stored in {time.perf_counter() - began:.0f} s ({url})")
    lookups = {
        "miss": CacheKey("task-3", digest(10**9), digest(3), "chat"),
        "hit, request stored ~40 times": CacheKey("task-1", digest(1), digest(1), "chat"),
        "hit, request stored 500 times": CacheKey("task-0", HOT, digest(0), "chat"),
    }
    for name, key in lookups.items():
        found = find_cached(engine, key, window_seconds=WINDOW) is not None
        if found != name.startswith("hit"):
            raise SystemExit(f"{name}: the lookup {'found' if found else 'missed'} unexpectedly")

    def floor() -> None:
        with Session(engine) as session:
            session.exec(sa.select(sa.literal(1))).first()  # type: ignore[call-overload]

    median, p99 = timed(floor, args.repeats)
    print(f"{'floor (SELECT 1 in a session)':32} median {median:6.3f} ms  p99 {p99:6.3f} ms")
    for name, key in lookups.items():
        median, p99 = timed(lookup(engine, key), args.repeats)
        print(f"{name:32} median {median:6.3f} ms  p99 {p99:6.3f} ms")
    engine.dispose()


if __name__ == "__main__":
    main()
