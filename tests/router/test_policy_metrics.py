"""Each proxy exports the routing policy it last read: a task's mode, cutover and live
version."""

from __future__ import annotations

from collections.abc import Callable

from conftest import RunningProxy
from routing_support import TASK, set_policy
from servers import wait_until


def gauge(proxy: RunningProxy, name: str, **labels: str) -> float | None:
    value: float | None = proxy.runtime.metrics.registry.get_sample_value(
        name, {"task": TASK, **labels}
    )
    return value


def modes(proxy: RunningProxy) -> dict[str, float | None]:
    return {m: gauge(proxy, "stillroom_task_mode", mode=m) for m in ("off", "shadow", "live")}


def test_mode_cutover_and_live_version_follow_the_policy(
    routed_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = routed_proxy()
    wait_until(lambda: modes(proxy) == {"off": 1, "shadow": 0, "live": 0})
    assert gauge(proxy, "stillroom_task_active_version") == 1
    assert gauge(proxy, "stillroom_task_cutover_percent") == 0

    set_policy(proxy, mode="live", cutover_percent=25)
    wait_until(lambda: modes(proxy) == {"off": 0, "shadow": 0, "live": 1})
    assert gauge(proxy, "stillroom_task_cutover_percent") == 25

    set_policy(proxy, mode="shadow")
    wait_until(lambda: modes(proxy) == {"off": 0, "shadow": 1, "live": 0})


def test_a_task_with_a_student_has_its_savings_series_before_the_first_answer(
    routed_proxy: Callable[..., RunningProxy],
) -> None:
    """Prometheus's increase() counts from a series' first value: the student's first
    answers count only if the series was there, at zero, before them."""
    proxy = routed_proxy()
    wait_until(lambda: gauge(proxy, "stillroom_savings_usd_total") == 0)
    assert gauge(proxy, "stillroom_counterfactual_cost_usd_total") == 0
    assert gauge(proxy, "stillroom_requests_total", served_by="student", status="ok") == 0
    for kind in ("shadow", "audit"):
        assert gauge(proxy, "stillroom_scored_pairs_total", kind=kind, agrees="true") == 0
