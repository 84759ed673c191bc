"""Fixtures of the proxy tests that route to a student (defined in routing_support)."""

from __future__ import annotations

from routing_support import routed_proxy, vllm

__all__ = ["routed_proxy", "vllm"]
