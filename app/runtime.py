"""What one API process runs while it serves: the store, the served-model reference and its
swap watcher, the micro-batcher, and, when the settings say so, the trainer and the rollover
schedule as background threads.

The trainer's modules are imported only when it runs here: an API replica beside a trainer
of its own (Redis) never loads them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.batching import MicroBatcher
from app.encoding import RequestEncoder
from app.errors import STORE_ERRORS
from app.metrics import ServiceMetrics
from app.serving import ModelHolder, ServedModel, SwapWatcher
from trainer.core.config import ModelConfig
from trainer.core.registry import ensure_initial_model
from trainer.core.settings import Settings
from trainer.core.store import open_store
from trainer.core.store.base import Store

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger("asmg.api")


@dataclass
class Runtime:
    """What one API process owns while it runs; every handler gets it."""

    settings: Settings
    store: Store
    holder: ModelHolder
    batcher: MicroBatcher
    encoder: RequestEncoder
    metrics: ServiceMetrics
    watcher: SwapWatcher
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    scheduler: BackgroundScheduler | None = None
    trainer_store: Store | None = None  # the in-process trainer's

    @property
    def model_config(self) -> ModelConfig:
        """The shapes every served version has (the watcher refuses others)."""
        return self.watcher.config


def start_runtime(settings: Settings, store: Store, metrics: ServiceMetrics) -> Runtime:
    holder = ModelHolder()
    metrics.watch_store(store, settings.trainer_stall_seconds)

    def swapped(model: ServedModel) -> None:  # called right after the swap: its time is the swap's
        metrics.record_swap(model.version, model.period, model.info.created)

    watcher = SwapWatcher(
        store,
        holder,
        settings.model(),
        settings.swap_poll_seconds,
        on_swap=swapped,
        on_failure=lambda version, reason: metrics.load_failures.inc(),
    )
    batcher = MicroBatcher(holder, settings.batch_max_items, settings.batch_wait_ms / 1000, settings.batch_turns)
    rt = Runtime(settings, store, holder, batcher, RequestEncoder(watcher.config), metrics, watcher)
    if settings.admin_token is None:
        log.warning("ASMG_ADMIN_TOKEN is not set: /admin is open (development only)")
    try:
        ensure_initial_model(store, settings)
        watcher.sync()
    except STORE_ERRORS as exc:  # start anyway: /readyz says 503 until the watcher has loaded a model
        log.error("the store is unavailable at start (%s); serving once it answers", exc)
    watcher.start()
    if settings.runs_trainer_in_process:
        start_trainer(rt)
    return rt


def start_trainer(rt: Runtime) -> None:
    """The trainer, supervised, and the rollover schedule, on a store of their own: the trainer's
    calls move whole periods and may wait longer than a request."""
    from trainer.loop.schedule import start_rollover_schedule
    from trainer.loop.worker import PeriodTrainer, run_supervised

    settings = rt.settings
    rt.trainer_store = open_store(settings, for_trainer=True)
    trainer = PeriodTrainer(rt.trainer_store, settings)
    thread = threading.Thread(
        target=run_supervised,
        args=(rt.trainer_store, settings, rt.stop, trainer, rt.metrics.trainer_restarts.inc),
        name="trainer",
    )
    thread.start()
    rt.threads.append(thread)
    rt.scheduler = start_rollover_schedule(rt.trainer_store, settings, trainer.owner, rt.stop)


def stop_runtime(rt: Runtime, close_store: bool) -> None:
    rt.stop.set()
    if rt.scheduler:
        rt.scheduler.shutdown(wait=False)
    rt.watcher.stop()
    for thread in rt.threads:
        thread.join()
    rt.metrics.unwatch_store()
    if rt.trainer_store is not None:
        rt.trainer_store.close()
    if close_store:
        rt.store.close()
