"""Micro-batches of the blocking work before a student inside the proxy answers: concurrent
requests share one call (one worker-thread hop), each gets its own result, a failing call
fails them all (they fall back to the teacher), a cancelled one leaves the others alone."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from core.wire import ChatCompletionRequest
from router.batching import MicroBatcher
from router.policy import Policy, StudentRef
from router.route import Router
from router.student import PromptEmbedding, StudentReply

LONG_WINDOW = 60.0  # batches below are dispatched by size, never by the clock
GUARD = 10.0  # seconds before a test that would hang fails instead


@dataclass
class Calls:
    """A blocking ``work`` that records each batch and the thread it ran on."""

    batches: list[list[int]] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)
    hold: bool = False  # wait for ``release`` before answering
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    failure: Exception | None = None

    def __call__(self, items: Sequence[int]) -> list[str]:
        self.batches.append(list(items))
        self.threads.add(threading.get_ident())
        self.started.set()
        if self.hold:
            self.release.wait(GUARD)
        if self.failure is not None:
            raise self.failure
        return [f"answer to {item}" for item in items]


async def test_concurrent_requests_share_one_call_and_each_gets_its_own_answer() -> None:
    calls = Calls()
    batcher = MicroBatcher(calls, window_seconds=LONG_WINDOW, max_items=4)
    answers = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(n) for n in (3, 1, 4, 2))), GUARD
    )
    assert answers == ["answer to 3", "answer to 1", "answer to 4", "answer to 2"]
    assert calls.batches == [[3, 1, 4, 2]]
    assert threading.get_ident() not in calls.threads, "never on the event loop"


async def test_a_lone_request_is_answered_when_the_window_closes() -> None:
    calls = Calls()
    batcher = MicroBatcher(calls, window_seconds=0.002, max_items=16)
    assert await asyncio.wait_for(batcher.submit(7), GUARD) == "answer to 7"
    assert calls.batches == [[7]]


async def test_requests_past_the_batch_size_go_in_the_next_batch() -> None:
    calls = Calls()
    batcher = MicroBatcher(calls, window_seconds=0.001, max_items=2)
    answers = await asyncio.wait_for(asyncio.gather(*(batcher.submit(n) for n in range(5))), GUARD)
    assert answers == [f"answer to {n}" for n in range(5)]
    assert calls.batches == [[0, 1], [2, 3], [4]]


async def test_requests_that_come_while_a_batch_runs_go_together_in_the_next() -> None:
    calls = Calls(hold=True)
    batcher = MicroBatcher(calls, window_seconds=0.0, max_items=16)
    first = asyncio.create_task(batcher.submit(0))
    assert await asyncio.to_thread(calls.started.wait, GUARD), "the first batch runs"
    later = [asyncio.create_task(batcher.submit(n)) for n in (1, 2, 3)]
    calls.release.set()
    answers = await asyncio.wait_for(asyncio.gather(first, *later), GUARD)
    assert answers == [f"answer to {n}" for n in range(4)]
    assert calls.batches == [[0], [1, 2, 3]]


async def test_a_failing_batch_fails_each_of_its_requests() -> None:
    calls = Calls(failure=RuntimeError("the model is gone"))
    batcher = MicroBatcher(calls, window_seconds=LONG_WINDOW, max_items=3)
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(n) for n in range(3)), return_exceptions=True), GUARD
    )
    assert [str(o) for o in outcomes] == ["the model is gone"] * 3
    calls.failure = None
    second = asyncio.gather(*(batcher.submit(n) for n in range(3)))
    assert await asyncio.wait_for(second, GUARD) == [f"answer to {n}" for n in range(3)]


async def test_a_request_cancelled_while_waiting_is_left_out_of_the_batch() -> None:
    calls = Calls()
    batcher = MicroBatcher(calls, window_seconds=LONG_WINDOW, max_items=3)
    leaving = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)
    leaving.cancel()
    staying = [asyncio.create_task(batcher.submit(n)) for n in (1, 2, 3)]
    assert await asyncio.wait_for(asyncio.gather(*staying), GUARD) == [
        "answer to 1",
        "answer to 2",
        "answer to 3",
    ]
    assert calls.batches == [[1, 2, 3]]
    assert leaving.cancelled()


async def test_a_request_cancelled_during_its_batch_leaves_the_others_their_answers() -> None:
    calls = Calls(hold=True)
    batcher = MicroBatcher(calls, window_seconds=LONG_WINDOW, max_items=3)
    tasks = [asyncio.create_task(batcher.submit(n)) for n in range(3)]
    assert await asyncio.to_thread(calls.started.wait, GUARD), "the batch is in its thread"
    tasks[1].cancel()
    calls.release.set()
    done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), GUARD)
    assert done[0] == "answer to 0"
    assert done[2] == "answer to 2"
    assert isinstance(done[1], asyncio.CancelledError)


# --- through the router -----------------------------------------------------------------


PROFILE = {
    "models": ["gpt-4o-mini"],
    "response_formats": ["text"],
    "tools": False,
    "max_prompt_chars": 200,
}


@dataclass
class Prompts:
    """An embedder that embeds each prompt as its length, in batches it records."""

    batches: list[int] = field(default_factory=list)
    failure: Exception | None = None

    def embed_many(self, batch: Sequence[list[dict[str, Any]]]) -> list[PromptEmbedding]:
        self.batches.append(len(batch))
        if self.failure is not None:
            raise self.failure
        return [
            PromptEmbedding(np.array([len(m[-1]["content"])], dtype=np.float32), 0.001)
            for m in batch
        ]


class EchoStudent:
    """A classifier that answers with the embedding it was handed."""

    async def answer(
        self, student: StudentRef, payload: dict[str, Any], *, prompt: PromptEmbedding | None = None
    ) -> StudentReply:
        assert prompt is not None
        text = f"length {int(prompt.vector[0])}"
        completion = {"choices": [{"index": 0, "message": {"content": text}}]}
        return StudentReply(completion, text, -0.01, seconds=0.001)


def classifier_policy() -> Policy:
    ref = StudentRef(uuid.uuid4().hex, 1, "classifier", "t-v1", "label", -1.0, PROFILE)
    return Policy(task="t", mode="live", cutover_percent=100.0, student=ref)


def chat(text: str) -> tuple[ChatCompletionRequest, dict[str, Any]]:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return ChatCompletionRequest.model_validate(payload), payload


async def test_concurrent_classifier_requests_are_embedded_together_and_answered_apart() -> None:
    prompts = Prompts()
    router = Router(
        students=EchoStudent(), embedder=prompts, batch_window_seconds=LONG_WINDOW, batch_max=3
    )
    texts = ["a", "bbb", "bb"]
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(router.route(classifier_policy(), *chat(t)) for t in texts)), GUARD
    )
    assert [o.reply.text for o in outcomes if o.reply is not None] == [
        "length 1",
        "length 3",
        "length 2",
    ]
    assert prompts.batches == [3]


@pytest.mark.parametrize("failure", [RuntimeError("model files missing"), MemoryError()])
async def test_a_failing_embedding_sends_each_request_of_the_batch_to_the_teacher(
    failure: Exception,
) -> None:
    router = Router(
        students=EchoStudent(),
        embedder=Prompts(failure=failure),
        batch_window_seconds=LONG_WINDOW,
        batch_max=2,
    )
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(router.route(classifier_policy(), *chat(t)) for t in ("x", "y"))), GUARD
    )
    assert [(o.served_by, o.reason) for o in outcomes] == [("fallback", "student_error")] * 2
