"""Fixtures of the dashboard tests: the dashboards' generator and a real Prometheus."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from dashboards_support import GRAFANA, PrometheusServer


@pytest.fixture(scope="session")
def build() -> ModuleType:
    """grafana/build.py, the dashboards' generator."""
    spec = importlib.util.spec_from_file_location("grafana_build", GRAFANA / "build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], PrometheusServer]]:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("the prometheus binary is missing (apt-get install prometheus)")
        pytest.skip("the prometheus binary is missing (apt-get install prometheus)")
    started: list[PrometheusServer] = []

    def start(targets: dict[str, str]) -> PrometheusServer:
        folder = tmp_path / f"prometheus{len(started)}"
        folder.mkdir()
        server = PrometheusServer(binary, folder, targets)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
