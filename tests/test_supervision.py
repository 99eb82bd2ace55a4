"""The trainer loop outlives its failures: retries with backoff, restarts, and a status that says how it fares."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.service import small_settings, traffic, wait_for
from trainer.core.health import trainer_health
from trainer.core.retry import Backoff
from trainer.core.settings import Settings
from trainer.core.store import LocalStore
from trainer.core.store.base import Interaction, Store
from trainer.loop import worker
from trainer.loop.worker import PeriodTrainer, run_supervised, run_trainer


def test_backoff_doubles_up_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(1.0, 8.0, random.Random(0))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered, not lockstep
    assert backoff.failures == 6
    backoff.reset()
    assert backoff.failures == 0 and backoff.next_delay() <= 1.0


def test_trainer_health_is_the_age_of_its_last_progress() -> None:
    now = 10_000.0
    assert not trainer_health({}, now, 60).ok
    fresh = trainer_health({"heartbeat": now - 5, "state": "idle"}, now, 60)
    assert fresh.ok and fresh.reason == "" and fresh.heartbeat_age == 5
    failing = {"heartbeat": now - 61, "consecutive_failures": 4, "last_error": "ConnectionError: refused"}
    stalled = trainer_health(failing, now, 60)
    assert not stalled.ok and "61 s" in stalled.reason and "4 failed rounds" in stalled.reason
    assert "ConnectionError" in stalled.reason


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "RETRY_BASE_SECONDS", 0.05)


def feed(store: Store, settings: Settings, periods: int) -> None:
    for events in traffic(periods, seed=4):
        batch = [Interaction(e["user_id"], e["item_id"], tuple(e["categories"]), e["label"], 1.0) for e in events]
        store.append(batch, settings.history_length)
        store.rollover()


@pytest.fixture
def loop_store(tmp_path: Path) -> Iterator[tuple[Settings, LocalStore]]:
    settings = small_settings(tmp_path / "state", method="iu", trainer_poll_seconds=0.02)
    store = LocalStore(settings.state_dir)
    yield settings, store
    store.close()


@contextmanager
def running(target: Any, *args: Any) -> Iterator[None]:
    """``target(store, settings, stop, *rest)`` in a thread while the block runs; stopped and joined after."""
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(*args[:2], stop, *args[2:]), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_failing_rounds_are_retried_until_the_store_answers_and_each_period_trains_once(
    loop_store: tuple[Settings, LocalStore], monkeypatch: pytest.MonkeyPatch, fast_retries: None
) -> None:
    settings, store = loop_store
    feed(store, settings, 3)
    failures = {"left": 4}
    read_period = store.read_period
    seen: list[dict[str, Any]] = []

    def flaky(period: int) -> list[Interaction]:
        if failures["left"]:
            failures["left"] -= 1
            seen.append(store.trainer_status())
            raise sqlite3.OperationalError("database is locked")
        return read_period(period)

    monkeypatch.setattr(store, "read_period", flaky)
    with running(run_trainer, store, settings, PeriodTrainer(store, settings)):
        wait_for(lambda: store.trained_through() == 3, 30, "three periods trained")
        wait_for(lambda: store.trainer_status().get("consecutive_failures") == 0, 10, "the failures cleared")
    assert [v.trained_through for v in store.versions()] == [0, 1, 2, 3]  # once each, in order
    # while it failed, the record said so, and its heartbeat stood still: a period that fails
    # over and over starts again each time, which is no progress
    assert [s.get("consecutive_failures", 0) for s in seen] == [0, 1, 2, 3]
    assert len({s["heartbeat"] for s in seen}) == 1
    assert "database is locked" in seen[-1]["last_error"]
    status = store.trainer_status()
    assert status["state"] == "idle" and status["last_period"]["period"] == 3 and status["last_success"] > 0


def test_a_trainer_loop_that_dies_is_restarted_by_its_supervisor(
    loop_store: tuple[Settings, LocalStore], monkeypatch: pytest.MonkeyPatch, fast_retries: None
) -> None:
    settings, store = loop_store
    feed(store, settings, 2)
    deaths = {"left": 1}
    run_once = PeriodTrainer.run_once

    def dying(self: PeriodTrainer) -> list[Any]:
        if deaths["left"]:
            deaths["left"] -= 1
            raise SystemExit("something called sys.exit in the trainer thread")  # not an Exception: escapes the loop
        return run_once(self)

    monkeypatch.setattr(PeriodTrainer, "run_once", dying)
    restarts: list[float] = []
    trainer = PeriodTrainer(store, settings)
    with running(run_supervised, store, settings, trainer, lambda: restarts.append(time.time())):
        wait_for(lambda: store.trained_through() == 2, 30, "the periods trained after the restart")
    assert len(restarts) == 1


def test_a_standby_trainer_leaves_the_active_ones_record_alone(loop_store: tuple[Settings, LocalStore]) -> None:
    settings, store = loop_store
    active, standby = PeriodTrainer(store, settings), PeriodTrainer(store, settings)
    active.run_once()
    record = store.trainer_status()
    assert record["owner"] == active.owner and record["state"] == "idle"
    assert standby.run_once() == []
    standby.record_failure(RuntimeError("boom"), 1, 1.0)
    assert store.trainer_status() == record
