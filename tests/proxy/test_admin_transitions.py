"""The admin API changes a task's mode and cutover through the one writer of them, and a
task's detail shows its latest changes with what made them and why."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from conftest import RunningProxy
from routing_support import TASK, routed_proxy, vllm

__all__ = ["routed_proxy", "vllm"]


def patch(proxy: RunningProxy, **changes: Any) -> dict[str, Any]:
    response = httpx.patch(proxy.url + f"/admin/tasks/{TASK}", json=changes)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def detail(proxy: RunningProxy) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(proxy.url + f"/admin/tasks/{TASK}").json()
    return body


def test_mode_and_cutover_changes_are_listed_newest_first_with_cause_and_reason(
    routed_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = routed_proxy()
    patch(proxy, mode="shadow")
    patch(proxy, mode="live", cutover_percent=25, reason="shadow agreement held for a week")
    transitions = detail(proxy)["transitions"]
    moves = [
        (t["cause"], t["from_mode"], t["to_mode"], t["to_cutover_percent"]) for t in transitions
    ]
    assert moves == [("admin", "shadow", "live", 25.0), ("admin", "off", "shadow", 0.0)]
    assert transitions[0]["reason"] == "shadow agreement held for a week"
    assert transitions[1]["reason"] == "set through the admin API"
    assert transitions[0]["created_at"] >= transitions[1]["created_at"]
    listed = httpx.get(proxy.url + "/admin/tasks").json()["data"]
    assert [t["last_transition"] for t in listed] == [transitions[0]]


def test_a_change_that_changes_neither_mode_nor_cutover_is_not_a_transition(
    routed_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = routed_proxy()
    patch(proxy, mode="live", cutover_percent=10)
    patch(proxy, mode="live", cutover_percent=10)
    patch(proxy, audit_percent=20, target_agreement=0.9)
    summary = detail(proxy)
    assert (summary["audit_percent"], summary["target_agreement"]) == (20, 0.9)
    assert len(summary["transitions"]) == 1


def test_a_task_without_changes_has_no_transitions(
    routed_proxy: Callable[..., RunningProxy],
) -> None:
    summary = detail(routed_proxy())
    assert (summary["transitions"], summary["last_transition"]) == ([], None)
