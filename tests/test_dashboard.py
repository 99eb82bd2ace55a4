"""Every query of the Grafana dashboard (deploy/grafana/dashboards/asmg.json) parses and returns
data on a real Prometheus that scraped a real service through several trained periods."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service import (
    AUTH,
    free_port,
    post_period,
    running_server,
    small_settings,
    traffic,
    trained_through,
    wait_for,
)

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards" / "asmg.json"
PREDICT = {"user_id": "u1", "items": [{"item_id": "i1", "categories": ["c1"]}, {"item_id": 7}]}


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Prometheus on a free port, scraping every second the targets written to its file."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    targets = tmp_path / "targets.json"
    targets.write_text("[]")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: asmg-api\n"
        f"    file_sd_configs: [{{files: ['{targets}'], refresh_interval: 1s}}]\n"
    )
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{url}/-/ready"), timeout=60, what="prometheus ready")
        yield url, targets
    finally:
        process.terminate()
        process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def query(prometheus: str, expr: str) -> dict[str, object]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert isinstance(answer, dict)
    return answer


def test_every_panel_query_returns_data(tmp_path: Path, prometheus: tuple[str, Path]) -> None:
    url_of_prometheus, targets = prometheus
    settings = small_settings(tmp_path / "state", trainer_in_process=True)
    periods = 6  # past the warm-up and the first gated period, so the gate's evidence exists
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        targets.write_text(json.dumps([{"targets": [url.removeprefix("http://")]}]))
        for number, events in enumerate(traffic(periods), start=1):
            post_period(client, events)
            client.post("/v1/predict", json=PREDICT).raise_for_status()
            assert client.post("/admin/rollover", headers=AUTH).status_code == 200
            wait_for(lambda n=number: trained_through(client) >= n, what=f"period {number} trained")
        post_period(client, traffic(1, seed=9)[0])  # the open period holds events

        def scraped_all() -> bool:
            # the last period trained, seen in enough scrapes for rates over them
            expr = f"count_over_time((max(asmg_trained_through) == {periods})[5m:1s])"
            result = query(url_of_prometheus, expr)["data"]["result"]  # type: ignore[index]
            return bool(result) and float(result[0]["value"][1]) >= 5

        wait_for(scraped_all, timeout=60, what="prometheus scraped the trained service")
        for title, expr in panel_queries():
            answer = query(url_of_prometheus, expr)
            assert answer["status"] == "success", (title, expr, answer)
            assert answer["data"]["result"], (title, expr)  # type: ignore[index]
