"""How much one server takes: open-loop rate steps past the latency rows until a step
fails, and closed-loop saturation (requests a second with a fixed number in flight).

A step holds when every request succeeded, the server kept up (it answered at least 97%
of the offered rate over the step) and its p99 stayed under :data:`HOLD_P99_MS`; the
capacity of a server is the highest step it held.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from loadgen import SETTLE_SECONDS, Endpoint, RatePhase, closed_loop, open_loop

CAPACITY_RATES = (700, 900, 1100, 1400, 1800, 2400)
HOLD_P99_MS = 50.0


def holds(phase: RatePhase) -> bool:
    return phase.errors == 0 and phase.achieved >= 0.97 * phase.rate and phase.p99_ms <= HOLD_P99_MS


async def rate_steps(
    target: str, server: Endpoint, rates: tuple[int, ...], seconds: float
) -> list[dict[str, Any]]:
    """Open-loop steps at ``rates`` in turn, up to and including the first that fails."""
    steps = []
    for rate in rates:
        await asyncio.sleep(SETTLE_SECONDS)
        phase = await open_loop(target, server, rate, seconds)
        steps.append({**asdict(phase), "holds": holds(phase)})
        if not holds(phase):
            break
    return steps


def capacity(steps: list[dict[str, Any]], held_below: int) -> int:
    """The highest rate held: the last step that held, else ``held_below`` (the highest
    latency row, which the caller knows held)."""
    held = [step["rate"] for step in steps if step["holds"]]
    return max(held, default=held_below)


async def saturation(servers: dict[str, Endpoint], seconds: float) -> dict[str, float | int]:
    """Closed-loop requests a second of each server, in windows that visit them forwards
    and then backwards (so a drift in the machine's speed cancels out), and the errors."""
    window = seconds / 2
    rates: dict[str, list[float]] = {name: [] for name in servers}
    errors = 0
    for name in [*servers, *reversed(servers)]:
        await asyncio.sleep(SETTLE_SECONDS)
        rate, failed = await closed_loop(servers[name], window)
        rates[name].append(rate)
        errors += failed
    figures: dict[str, float | int] = {
        name: round(sum(values) / len(values), 1) for name, values in rates.items()
    }
    figures["errors"] = errors
    return figures
