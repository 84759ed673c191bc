"""Fixtures of the router tests (defined in routing_support)."""

from __future__ import annotations

from routing_support import routed_proxy, vllm

__all__ = ["routed_proxy", "vllm"]
