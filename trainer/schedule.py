"""Closing periods on a clock (APScheduler), from the process that trains them."""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from trainer.settings import Settings
from trainer.store.base import Store
from trainer.worker import rollover

log = logging.getLogger("asmg.schedule")


def start_rollover_schedule(store: Store, settings: Settings, owner: str) -> BackgroundScheduler | None:
    """Start closing periods on the configured interval or crontab; None when neither is set.

    Only the holder of the trainer lease rolls over, so several trainer
    processes (one active, others standing by) close each period once.
    """
    if settings.rollover_cron:
        trigger: CronTrigger | IntervalTrigger = CronTrigger.from_crontab(settings.rollover_cron, timezone="UTC")
    elif settings.rollover_interval_seconds:
        trigger = IntervalTrigger(seconds=settings.rollover_interval_seconds)
    else:
        return None

    def job() -> None:
        if store.acquire_lease(owner, settings.lease_seconds):
            rollover(store)

    scheduler = BackgroundScheduler(timezone="UTC")
    # one rollover at a time; a late one is merged, never run twice back to back
    scheduler.add_job(job, trigger, max_instances=1, coalesce=True, id="rollover")
    scheduler.start()
    log.info("closing periods on %s", trigger)
    return scheduler
