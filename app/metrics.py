"""Prometheus metrics of the API, in a registry of its own.

Request counters and latency come from the dispatcher (``app/dispatch.py``); model and swap
metrics from the serving code; trainer and period metrics are read from the
store at scrape time, so they are right whichever process trained.

With several API processes (``asmg serve --workers N``) a scrape reaches one
of them, so each writes its figures to files in ``PROMETHEUS_MULTIPROC_DIR``
(prometheus_client's multiprocess mode, set up by :mod:`app.workers`) and
every scrape reports the sum over the processes; the served version is then
one series per process (label ``pid``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from trainer.core.health import PHASES, PUBLISHED, TRAINER_STATES, trainer_health
from trainer.core.store.base import Store

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# a version's commit to a replica serving it: tens of ms on a notification, up to ASMG_SWAP_POLL_SECONDS without
SWAP_DELAY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "asmg_http_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "asmg_http_request_duration_seconds",
            "HTTP request latency.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.items_scored = Counter("asmg_items_scored", "Candidate items scored.", registry=r)
        self.interactions = Counter("asmg_interactions_ingested", "Interactions durably logged.", registry=r)
        # one series per live process when shared (a process left on an old version shows)
        self.model_version = Gauge(
            "asmg_model_version", "Model version this process serves.", registry=r, multiprocess_mode="liveall"
        )
        self.model_period = Gauge(
            "asmg_model_period",
            "Period the served version was published for.",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.model_published = Gauge(
            "asmg_model_published_timestamp_seconds",
            "When the served version was committed (time() minus this: how stale the served model is).",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.model_swapped = Gauge(
            "asmg_model_swapped_timestamp_seconds",
            "When this process began serving its version (minus asmg_model_published_timestamp_seconds: how long "
            "after its commit).",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.swap_delay = Histogram(
            "asmg_model_swap_delay_seconds",
            "From a version's commit to this process serving it, for each swap to a newer version than it served.",
            buckets=SWAP_DELAY_BUCKETS,
            registry=r,
        )
        self.swaps = Counter("asmg_model_swaps", "Model versions swapped in.", registry=r)
        self.load_failures = Counter(
            "asmg_model_load_failures",
            "Versions refused: missing, corrupt, misfit or non-finite (each once per process).",
            registry=r,
        )
        self.trainer_restarts = Counter(
            "asmg_trainer_restarts", "Times the in-process trainer loop died and was started again.", registry=r
        )

        self._store_collector: StoreCollector | None = None
        self._served: int | None = None  # the version this process served before the latest swap

    def record_swap(self, version: int, period: int, published: float, now: float | None = None) -> None:
        """This process serves ``version`` (committed at ``published``) from ``now`` on.

        The delay from commit to serving is observed for a swap forward from a version served
        before: not for the first version a process loads when it starts, nor for a rollback.
        The two clocks are the trainer's and this process's; across machines their offset adds in.
        """
        now = time.time() if now is None else now
        self.swaps.inc()
        self.model_version.set(version)
        self.model_period.set(period)
        self.model_published.set(published)
        self.model_swapped.set(now)
        if self._served is not None and version > self._served:
            self.swap_delay.observe(max(0.0, now - published))
        self._served = version

    def watch_store(self, store: Store, stall_seconds: float) -> None:
        self._store_collector = StoreCollector(store, stall_seconds)
        self.registry.register(self._store_collector)

    def unwatch_store(self) -> None:
        if self._store_collector is not None:
            self.registry.unregister(self._store_collector)
            self._store_collector = None

    def exposition(self) -> bytes:
        """The scrape's text: this process's figures, or every API process's summed."""
        if not shared_across_processes():
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        if self._store_collector is not None:
            registry.register(self._store_collector)
        return generate_latest(registry)


def shared_across_processes() -> bool:
    """Whether the figures live in files the API processes share (see the module docstring)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class StoreCollector(Collector):
    """Period, pointer and trainer figures, read from the store on each scrape."""

    def __init__(self, store: Store, stall_seconds: float) -> None:
        self.store = store
        self.stall_seconds = stall_seconds

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            open_period = self.store.open_period()
            open_events = self.store.period_size(open_period)
            through = self.store.trained_through()
            pointer = self.store.pointer()
            pointed = None if pointer.version is None else self.store.version(pointer.version)
            status: dict[str, Any] = self.store.trainer_status()
        except Exception:  # an unreachable store shows as missing series, not a failed scrape
            return
        yield GaugeMetricFamily("asmg_open_period", "The period new interactions land in.", value=open_period)
        yield GaugeMetricFamily(
            "asmg_open_period_events", "Interactions logged in the open period so far.", value=open_events
        )
        yield GaugeMetricFamily("asmg_trained_through", "The last period the trainer committed.", value=through)
        yield GaugeMetricFamily(
            "asmg_model_pinned", "1 when an operator pinned the serving version.", value=pointer.pinned
        )
        if pointer.version is not None:
            yield GaugeMetricFamily(
                "asmg_model_pointer_version",
                "The version the registry points at (compare asmg_model_version).",
                value=pointer.version,
            )
        if pointed is not None:
            yield GaugeMetricFamily(
                "asmg_model_pointer_published_timestamp_seconds",
                "When the version the registry points at was committed (a replica serving another one has "
                "been behind since then at most).",
                value=pointed.created,
            )
        yield from trainer_families(status, time.time(), self.stall_seconds)
        last = status.get("last_period") or {}
        metrics = last.get("metrics") or {}
        for name, help_text in (
            ("pv_auc", "Progressive-validation AUC of the model that served the last trained period."),
            ("pv_logloss", "Progressive-validation LogLoss of the model that served the last trained period."),
            ("events", "Interactions in the last trained period."),
            ("gate_generated_auc", "The quality gate's evidence: the generated model's AUC on the last period."),
            ("gate_iu_auc", "The quality gate's evidence: the AUC of IU's model on the last period."),
        ):
            value = metrics.get(name)
            if value is not None and math.isfinite(value):
                yield GaugeMetricFamily(f"asmg_last_period_{name}", help_text, value=value)
        published = GaugeMetricFamily(
            "asmg_last_period_published",
            "1 for what the last trained period published: generated (the method's model), iu, or held.",
            labels=["choice"],
        )
        if last.get("published") in PUBLISHED:
            for choice in PUBLISHED:
                published.add_metric([choice], float(last["published"] == choice))
        yield published
        yield GaugeMetricFamily(
            "asmg_trainer_generated_refused_in_a_row",
            "Periods in a row whose generated model the quality gate or the held-back check refused.",
            value=int(status.get("generated_refused_in_a_row") or 0),
        )
        phases = GaugeMetricFamily(
            "asmg_trainer_phase_seconds", "Seconds the last trained period spent per phase.", labels=["phase"]
        )
        for phase in PHASES:
            if phase in (last.get("seconds") or {}):
                phases.add_metric([phase], last["seconds"][phase])
        yield phases


def trainer_families(status: dict[str, Any], now: float, stall_seconds: float) -> Iterator[GaugeMetricFamily]:
    """The trainer's health, from its status record."""
    health = trainer_health(status, now, stall_seconds)
    yield GaugeMetricFamily(
        "asmg_trainer_healthy",
        "1 while the trainer made progress within ASMG_TRAINER_STALL_SECONDS (as GET /healthz/trainer).",
        value=health.ok,
    )
    states = GaugeMetricFamily("asmg_trainer_state", "1 for the trainer's current state.", labels=["state"])
    for state in TRAINER_STATES:
        states.add_metric([state], float(status.get("state") == state))
    yield states
    yield GaugeMetricFamily(
        "asmg_trainer_consecutive_failures",
        "The trainer's failed rounds since its last good one.",
        value=int(status.get("consecutive_failures") or 0),
    )
    for key, name, help_text in (
        ("heartbeat", "asmg_trainer_heartbeat_timestamp_seconds", "When the trainer last showed progress."),
        ("last_success", "asmg_trainer_last_success_timestamp_seconds", "When the trainer last committed a period."),
        ("state_bytes", "asmg_trainer_state_bytes", "Size of the trainer state it committed last."),
    ):
        if status.get(key) is not None:
            yield GaugeMetricFamily(name, help_text, value=float(status[key]))
