"""A real Prometheus server for tests, and the queries of the committed Grafana dashboards."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from servers import free_port, wait_until

GRAFANA = Path(__file__).resolve().parents[1] / "grafana"


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel}: {self.expr}"


def committed_dashboards() -> dict[str, dict[str, Any]]:
    """The dashboards as committed, by file name."""
    return {
        path.name: json.loads(path.read_text())
        for path in sorted((GRAFANA / "dashboards").glob("*.json"))
    }


def panel_queries(dashboards: dict[str, dict[str, Any]]) -> list[PanelQuery]:
    """Every target of every panel of ``dashboards``."""
    return [
        PanelQuery(board["title"], panel["title"], target["expr"])
        for board in dashboards.values()
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


class PrometheusServer:
    """The real Prometheus, scraping ``targets`` (job name: host:port) every second, its
    data in a temporary folder."""

    def __init__(self, binary: str, folder: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [address]}]}
                for job, address in targets.items()
            ],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = folder / "prometheus.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(self._ready, timeout=60)
        except AssertionError:
            self.stop()
            raise AssertionError(f"Prometheus did not start:\n{self.log.read_text()}") from None

    def _ready(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            return httpx.get(self.url + "/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, expr: str) -> dict[str, Any]:
        """The answer of ``/api/v1/query`` (instant query, now): ``status``, ``data``
        or ``error``."""
        response = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=30)
        body: dict[str, Any] = response.json()
        return body

    def targets_up(self) -> bool:
        result = self.query("up")["data"]["result"]
        return bool(result) and all(sample["value"][1] == "1" for sample in result)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
