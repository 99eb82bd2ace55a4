"""Helpers shared by the service tests: small settings, traffic, waiting."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from app.server import server_in_thread
from trainer.core.settings import Settings
from trainer.research.synthetic import synthetic_events

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def small_settings(state_dir: Path, redis_url: str | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "key_prefix": f"t{uuid.uuid4().hex[:8]}",
        "state_dir": state_dir,
        "admin_token": TOKEN,
        "user_buckets": 256,
        "item_buckets": 256,
        "category_buckets": 16,
        "history_length": 5,
        "batch_size": 32,
        "lr": 1e-2,
        "meta_lr": 1e-2,
        "swap_poll_seconds": 0.2,
        "trainer_poll_seconds": 0.05,
        "keep_versions": 20,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def running_server(settings: Settings) -> Iterator[str]:
    """The service under ``settings`` on a free loopback port, in this process; yields its base URL."""
    with server_in_thread(settings) as url:
        yield url


def traffic(periods: int, seed: int = 0, per_period: int = 150) -> list[list[dict[str, Any]]]:
    """Synthetic drifting interactions as API events, one list per period."""
    table = synthetic_events(n_users=40, n_items=50, n_periods=periods, events_per_period=per_period, seed=seed)
    events = [
        {
            "user_id": str(table.user[i]),
            "item_id": str(table.item[i]),
            "categories": list(table.categories[i]),
            "label": int(table.label[i]),
        }
        for i in range(len(table))
    ]
    return [events[p * per_period : (p + 1) * per_period] for p in range(periods)]


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def post_period(client: httpx.Client, events: list[dict[str, Any]]) -> int:
    response = client.post("/v1/interactions", json={"events": events})
    assert response.status_code == 202, response.text
    return int(response.json()["period"])


def trained_through(client: httpx.Client) -> int:
    return int(client.get("/admin/status", headers=AUTH).json()["trained_through"])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
