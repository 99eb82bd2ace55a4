"""The rollover clock never skips a period: late wake-ups, restarts across a due time, a failing store."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from tests.service import small_settings, wait_for
from trainer.core.store import LocalStore
from trainer.core.store.base import Interaction
from trainer.loop import schedule
from trainer.loop.schedule import JOB_ID, add_rollover_job, overdue, start_rollover_schedule


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    opened = LocalStore(tmp_path / "state")
    yield opened
    opened.close()


def log_one(store: LocalStore) -> None:
    store.append([Interaction("u", "i", (), 1, 1.0)], 5)


def test_a_wake_up_long_past_the_rollover_time_still_closes_the_period(store: LocalStore, tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "state", rollover_interval_seconds=3600)
    log_one(store)
    stop = threading.Event()
    scheduler = BackgroundScheduler(timezone="UTC")
    add_rollover_job(scheduler, store, settings, "owner", IntervalTrigger(hours=1), stop)
    # the clock fires 30 s late, as after a suspended machine or a stalled process
    scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC) - timedelta(seconds=30))
    scheduler.start()
    try:
        wait_for(lambda: store.open_period() == 2, 10, "the late rollover")
    finally:
        stop.set()
        scheduler.shutdown(wait=False)


def test_a_rollover_due_while_nothing_ran_happens_when_the_clock_starts(store: LocalStore, tmp_path: Path) -> None:
    log_one(store)
    store.rollover()  # period 2 opened now
    log_one(store)
    # an hourly clock, started again 2 h after period 2 opened (the trainer was down across its time)
    settings = small_settings(tmp_path / "state", rollover_interval_seconds=3600)
    opened = store.period_started()
    assert opened is not None
    with store._write() as conn:  # backdate the opening
        store._set(conn, "period.opened", opened - 7200)
    stop = threading.Event()
    scheduler = start_rollover_schedule(store, settings, "owner", stop)
    assert scheduler is not None
    try:
        wait_for(lambda: store.open_period() == 3, 10, "the overdue rollover")
    finally:
        stop.set()
        scheduler.shutdown(wait=False)


def test_only_a_due_rollover_happens_when_the_clock_starts(store: LocalStore, tmp_path: Path) -> None:
    log_one(store)
    store.rollover()
    log_one(store)
    stop = threading.Event()
    settings = small_settings(tmp_path / "state", rollover_interval_seconds=3600)
    schedule.close_period(store, settings, "owner", stop, only_if_overdue=True)
    assert store.open_period() == 2


def test_overdue_by_interval_and_by_crontab() -> None:
    now = datetime(2026, 12, 4, 12, 0, 30, tzinfo=UTC)
    hourly = IntervalTrigger(hours=1)
    assert overdue(hourly, now.timestamp() - 3601, now)
    assert not overdue(hourly, now.timestamp() - 3599, now)
    assert not overdue(hourly, None, now)
    midnight = CronTrigger.from_crontab("0 0 * * *", timezone="UTC")
    yesterday_noon = datetime(2026, 12, 3, 12, tzinfo=UTC).timestamp()
    assert overdue(midnight, yesterday_noon, now)  # midnight passed since
    just_after_midnight = datetime(2026, 12, 4, 0, 0, 0, 200_000, tzinfo=UTC).timestamp()
    assert not overdue(midnight, just_after_midnight, now)  # opened by that very rollover


def test_a_rollover_against_a_failing_store_is_retried(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_one(store)
    failures = {"left": 2}
    rollover = store.rollover

    def flaky() -> int:
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return rollover()

    monkeypatch.setattr(store, "rollover", flaky)
    monkeypatch.setattr(schedule, "RETRY_BASE_SECONDS", 0.01)
    settings = small_settings(tmp_path / "state", rollover_interval_seconds=3600)
    schedule.close_period(store, settings, "owner", threading.Event())
    assert store.open_period() == 2 and failures["left"] == 0


def test_only_the_lease_holder_rolls_over(store: LocalStore, tmp_path: Path) -> None:
    log_one(store)
    assert store.acquire_lease("active", 30)
    settings = small_settings(tmp_path / "state", rollover_interval_seconds=3600)
    schedule.close_period(store, settings, "standby", threading.Event())
    assert store.open_period() == 1
    schedule.close_period(store, settings, "active", threading.Event())
    assert store.open_period() == 2
