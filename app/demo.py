"""``asmg demo``: the whole loop on one machine, watched from the client side.

Starts the service on the embedded store (API and trainer in one process),
then plays the seeded drifting synthetic users against it over HTTP: each
period's interactions are posted, the period is closed through the admin
endpoint, and once the trainer has published the next version the demo
prints which version served the period and how well it scored it.
"""

from __future__ import annotations

import http.client
import json
import secrets
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.server import server_in_thread
from trainer.core.settings import Settings
from trainer.research.events import EventTable
from trainer.research.synthetic import synthetic_events

BATCH = 500


class DemoClient:
    """A JSON client over one keep-alive connection (the standard library's: the demo is the
    README's first command, and runs with the runtime dependencies only)."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        self._conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def request(self, method: str, path: str, body: Any = None) -> Any:
        self._conn.request(method, path, None if body is None else json.dumps(body), self._headers)
        response = self._conn.getresponse()
        payload = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {payload.decode(errors='replace')}")
        return json.loads(payload)

    def close(self) -> None:
        self._conn.close()


def wait_trained(client: DemoClient, period: int, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: dict[str, Any] = client.request("GET", "/admin/status")
        last = status["trainer"].get("last_period") or {}
        if status["trained_through"] >= period and last.get("period", 0) >= period:
            return status
        if status["trainer"].get("state") == "error":
            raise RuntimeError(f"the trainer failed: {status['trainer'].get('error')}")
        time.sleep(0.1)
    raise RuntimeError(f"period {period} was not trained within {timeout:.0f} s")


def wait_served(client: DemoClient, version: int, timeout: float = 60.0) -> int:
    """Block until replicas serve ``version``, so the next period's traffic meets it."""
    probe = {"user_id": "probe", "items": [{"item_id": "probe"}]}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        served = int(client.request("POST", "/v1/predict", probe)["model_version"])
        if served >= version:
            return served
        time.sleep(0.05)
    raise RuntimeError(f"version {version} was not served within {timeout:.0f} s")


def event(table: EventTable, i: int) -> dict[str, Any]:
    return {
        "user_id": str(table.user[i]),
        "item_id": str(table.item[i]),
        "categories": list(table.categories[i]),
        "label": int(table.label[i]),
        "timestamp": float(table.timestamp[i]) + 1.0,
    }


def figure(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.4f}" if name in metrics else "-"


def demo_settings(state_dir: Path, token: str, seed: int) -> Settings:
    # small tables and more steps per period: the synthetic world has 300 users and 400 items
    return Settings(
        redis_url=None,
        state_dir=state_dir,
        admin_token=token,
        user_buckets=4096,
        item_buckets=4096,
        category_buckets=64,
        batch_size=64,
        lr=1e-2,
        meta_lr=1e-2,
        seed=seed,
        swap_poll_seconds=0.5,
        trainer_poll_seconds=0.2,
        rollover_interval_seconds=None,
        rollover_cron=None,
        trainer_in_process=True,
    )


def run_demo(periods: int, state_dir: Path | None, port: int, seed: int) -> int:
    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="asmg-demo-") as scratch:
        settings = demo_settings(state_dir or Path(scratch), token, seed)
        table = synthetic_events(n_periods=periods, seed=seed)
        per_period = len(table) // periods
        with server_in_thread(settings, port) as url, closing(DemoClient(url, token)) as client:
            print(f"asmg demo: serving on {url} (store in {settings.state_dir}), method {settings.method}")
            print(f"{'period':>6} {'events':>6} {'served':>7} {'AUC':>7} {'LogLoss':>8} {'IU AUC':>7}  next model")
            served = 1
            for p in range(periods):
                rows = range(p * per_period, (p + 1) * per_period)
                for start in range(rows.start, rows.stop, BATCH):
                    events = [event(table, i) for i in range(start, min(start + BATCH, rows.stop))]
                    client.request("POST", "/v1/interactions", {"events": events})
                closed = client.request("POST", "/admin/rollover")["closed_period"]
                last = wait_trained(client, closed)["trainer"]["last_period"]
                metrics = last["metrics"]
                note = f" ({last['note']})" if last["note"] else ""
                print(
                    f"{closed:>6} {last['events']:>6} {'v' + str(served):>7} {figure(metrics, 'pv_auc'):>7} "
                    f"{figure(metrics, 'pv_logloss'):>8} {figure(metrics, 'gate_iu_auc'):>7}"
                    f"  v{last['version']}: {last['published']}{note}"
                )
                served = wait_served(client, last["version"])
            print("AUC: the served model on the period's traffic, scored before training on it;")
            print("IU AUC: what plain incremental updating would have served, on the same traffic.")
    return 0
