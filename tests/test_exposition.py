"""The /metrics exposition of a service that has trained periods passes Prometheus's own lint,
and holds every series the alert rules (deploy/prometheus/alerts.yml) are written against."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx

from tests.service import AUTH, post_period, running_server, small_settings, traffic, trained_through, wait_for

ALERTS = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml"


def test_a_trained_service_exposes_lint_clean_metrics_for_every_alert(tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "state", trainer_in_process=True)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        for number, events in enumerate(traffic(2), start=1):
            post_period(client, events)
            assert client.post("/admin/rollover", headers=AUTH).status_code == 200
            wait_for(lambda n=number: trained_through(client) >= n, what=f"period {number} trained")
        client.post("/v1/predict", json={"user_id": "u1", "items": [{"item_id": "i1"}]}).raise_for_status()
        wait_for(lambda: (r := client.get("/readyz").json())["model_version"] == r["pointer_version"], what="swap")
        exposition = client.get("/metrics").text
        [served] = [v for v in client.get("/admin/models", headers=AUTH).json() if v["serving"]]
    # the served version's commit time, from which its age is read
    published = re.search(r"^asmg_model_published_timestamp_seconds (\S+)$", exposition, re.M)
    assert published and float(published.group(1)) == served["created"]
    lint = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    exported = set(re.findall(r"^(asmg_\w+)[{ ]", exposition, re.M))  # sample names, as PromQL names them
    wanted = set(re.findall(r"\basmg_\w+", ALERTS.read_text()))
    assert wanted and wanted <= exported, sorted(wanted - exported)
