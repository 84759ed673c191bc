"""The demo's app: sends support messages through the proxy with the ``openai`` SDK, as a
real app would, at a steady rate, and keeps what each request saw."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import openai

TASK = "support-intents"
API_KEY = "sk-demo"  # the app's key: with key tenancy, its tenant's is the demo's task


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # monotonic seconds when the answer was complete
    served_by: str  # teacher, student, fallback, or "error"
    seconds: float
    stream: bool


@dataclass
class TrafficStats:
    """What the app saw, for the live view: the latest samples and running totals."""

    window: deque[Sample] = field(default_factory=lambda: deque(maxlen=5000))
    sent: int = 0
    answered: int = 0
    errors: int = 0
    last_error: str | None = None

    def record(self, sample: Sample) -> None:
        self.window.append(sample)
        if sample.served_by == "error":
            self.errors += 1
        else:
            self.answered += 1

    def recent(self, seconds: float) -> list[Sample]:
        since = time.monotonic() - seconds
        return [s for s in self.window if s.at >= since]

    def rate(self, seconds: float = 10.0) -> float:
        return len(self.recent(seconds)) / seconds

    def student_share(self, seconds: float = 30.0) -> float | None:
        recent = [s for s in self.recent(seconds) if s.served_by != "error"]
        if not recent:
            return None
        return sum(s.served_by == "student" for s in recent) / len(recent)

    def p50(self, served_by: str, seconds: float = 60.0) -> float | None:
        times = [s.seconds for s in self.recent(seconds) if s.served_by == served_by]
        return statistics.median(times) if times else None


class App:
    """Sends ``rate`` requests a second (Poisson arrivals), at most ``concurrency`` at once."""

    def __init__(
        self,
        *,
        base_url: str,
        system: str,
        messages: Sequence[str],
        rate: float,
        concurrency: int = 64,
        stream_share: float = 0.25,
        seed: int = 0,
    ) -> None:
        self.client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=API_KEY,
            default_headers={"X-Stillroom-Task": TASK},
            max_retries=2,  # the SDK's default, as an app has it
            timeout=60.0,
        )
        self.system = system
        self.messages = list(messages)
        self.rate = rate
        self.stream_share = stream_share
        self.slots = asyncio.Semaphore(concurrency)
        self.rng = random.Random(seed)
        self.stats = TrafficStats()
        self._tasks: set[asyncio.Task[None]] = set()

    async def ask(self, text: str, *, stream: bool) -> tuple[str, str]:
        """One request as the app makes it; returns (answer, who served it)."""
        messages: list[openai.types.chat.ChatCompletionMessageParam] = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": text},
        ]
        completions = self.client.chat.completions
        if not stream:
            raw = await completions.with_raw_response.create(
                model="gpt-4o", messages=messages, temperature=0
            )
            completion = raw.parse()
            return completion.choices[0].message.content or "", _served_by(raw.headers)
        raw_stream = await completions.with_raw_response.create(
            model="gpt-4o", messages=messages, temperature=0, stream=True
        )
        parts = []
        async for chunk in raw_stream.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        return "".join(parts), _served_by(raw_stream.headers)

    async def run(self, stop: asyncio.Event) -> None:
        """Sends requests until ``stop`` is set, then waits for those in flight."""
        while not stop.is_set():
            await self.slots.acquire()
            task = asyncio.create_task(self._one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            delay = self.rng.expovariate(self.rate)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()

    async def _one(self) -> None:
        text = self.rng.choice(self.messages)
        stream = self.rng.random() < self.stream_share
        self.stats.sent += 1
        started = time.monotonic()
        try:
            _, served_by = await self.ask(text, stream=stream)
        except openai.APIError as exc:
            served_by = "error"
            self.stats.last_error = str(exc)[:200]
        finally:
            self.slots.release()
        now = time.monotonic()
        self.stats.record(Sample(now, served_by, now - started, stream))


def _served_by(headers: object) -> str:
    value = getattr(headers, "get", lambda _k: None)("x-stillroom-served-by")
    return str(value) if value else "teacher"
