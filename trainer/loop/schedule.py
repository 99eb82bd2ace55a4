"""Closing periods on a clock (APScheduler), from the process that trains them.

A rollover is never skipped for being late: a wake-up past its time (a
suspended machine, a process stalled behind a long pause) still closes the
period, and several missed ones close it once. A rollover that was due while
no trainer ran (a restart across its time) happens as the clock starts, judged
from when the open period was opened. A store that is down when a rollover is
due is retried with backoff until it answers.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import TypeAlias

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from trainer.core.retry import Backoff
from trainer.core.settings import Settings
from trainer.core.store.base import EmptyPeriod, Store
from trainer.loop.worker import RETRY_BASE_SECONDS

log = logging.getLogger("asmg.schedule")

Trigger: TypeAlias = CronTrigger | IntervalTrigger
JOB_ID = "rollover"


def rollover(store: Store) -> int | None:
    """Close the open period; None (and a log line) when it is empty."""
    try:
        closed = store.rollover()
    except EmptyPeriod:
        log.info("rollover skipped: the open period has no interactions")
        return None
    log.info("closed period %d", closed)
    return closed


def rollover_trigger(settings: Settings) -> Trigger | None:
    """The configured clock: ``ASMG_ROLLOVER_CRON`` or ``ASMG_ROLLOVER_INTERVAL_SECONDS``; None for neither."""
    if settings.rollover_cron:
        return CronTrigger.from_crontab(settings.rollover_cron, timezone="UTC")
    if settings.rollover_interval_seconds:
        return IntervalTrigger(seconds=settings.rollover_interval_seconds, timezone="UTC")
    return None


def overdue(trigger: Trigger, opened: float | None, now: datetime) -> bool:
    """Whether the clock was due to close the period opened at ``opened`` (seconds since the
    epoch) by ``now``; False when the store does not know when it was opened."""
    if opened is None:
        return False
    if isinstance(trigger, IntervalTrigger):
        return now.timestamp() - opened >= trigger.interval_length
    # cron times are whole seconds: a period opened by the fire at 00:00:00.2 is not due at 00:00:00
    fire = trigger.get_next_fire_time(None, datetime.fromtimestamp(opened + 1, tz=UTC))
    return fire is not None and fire <= now


def add_rollover_job(
    scheduler: BackgroundScheduler,
    store: Store,
    settings: Settings,
    owner: str,
    trigger: Trigger,
    stop: threading.Event,
) -> None:
    """Close periods on ``trigger``: however late the scheduler wakes (no misfire grace
    time), and once for several missed times (coalesced)."""

    def job() -> None:
        close_period(store, settings, owner, stop)

    scheduler.add_job(job, trigger, id=JOB_ID, max_instances=1, coalesce=True, misfire_grace_time=None)


def close_period(
    store: Store, settings: Settings, owner: str, stop: threading.Event, only_if_overdue: bool = False
) -> None:
    """Roll over if this process holds the trainer lease (so several trainers close each
    period once), retrying a failing store until it answers or ``stop`` is set."""
    backoff = Backoff(RETRY_BASE_SECONDS, settings.trainer_retry_max_seconds)
    while not stop.is_set():
        try:
            if not store.acquire_lease(owner, settings.lease_seconds):
                return
            if only_if_overdue:
                trigger = rollover_trigger(settings)
                if trigger is None or not overdue(trigger, store.period_started(), datetime.now(UTC)):
                    return
                log.info("a rollover came due while no trainer ran; closing the period now")
            rollover(store)
            return
        except Exception as exc:
            delay = backoff.next_delay()
            log.warning("rollover failed (%s); retrying in %.1f s", exc, delay)
            stop.wait(delay)


def start_rollover_schedule(
    store: Store, settings: Settings, owner: str, stop: threading.Event
) -> BackgroundScheduler | None:
    """Start closing periods on the configured interval or crontab; None when neither is set.
    ``stop`` ends the retries of a rollover in progress (set it before shutting the scheduler down)."""
    trigger = rollover_trigger(settings)
    if trigger is None:
        return None
    scheduler = BackgroundScheduler(timezone="UTC")
    add_rollover_job(scheduler, store, settings, owner, trigger, stop)
    # a rollover missed while no trainer ran: checked once, off the caller's thread
    scheduler.add_job(close_period, args=(store, settings, owner, stop, True), id="overdue", misfire_grace_time=None)
    scheduler.start()
    log.info("closing periods on %s", trigger)
    return scheduler
