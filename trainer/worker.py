"""The period loop: turn each closed period into the next serving model.

For every closed period, in order, exactly once: read its log, score the
model that served it (progressive validation), run the update method, apply
the quality gate, and publish the result together with the trainer state the
next period needs (one atomic ``commit_period``). A restarted trainer resumes
from the store; two trainers never publish the same period (a lease, and
``commit_period`` refusing anything but the next period).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.config import ModelConfig
from trainer.features import Examples, ItemRef, encode_stream
from trainer.history import HistoryBuilder
from trainer.learner import BaseLearner
from trainer.model import Params, checkpoint_bytes, load_checkpoint, score
from trainer.settings import Settings
from trainer.store.base import EmptyPeriod, NewVersion, Store, StoreError, VersionInfo
from trainer.updaters import Updater, make_updater
from trainer.updaters.asmg import Asmg

log = logging.getLogger("asmg.trainer")

PHASES = ("read", "evaluate", "gate", "update", "publish")


class ModelLoadError(RuntimeError):
    """A version's weights are missing, corrupt, or do not fit this service's model."""


def new_version(
    config: ModelConfig,
    params: Params,
    trained_through: int,
    method: str,
    metrics: dict[str, float] | None = None,
    note: str = "",
) -> NewVersion:
    blob = checkpoint_bytes(config, params, {"trained_through": trained_through, "method": method})
    finite = {k: float(v) for k, v in (metrics or {}).items() if math.isfinite(v)}
    return NewVersion(blob, hashlib.sha256(blob).hexdigest(), trained_through, method, finite, note)


def verified_params(info: VersionInfo, blob: bytes | None, config: ModelConfig) -> Params:
    """The weights of ``info``, only if the blob is whole and fits ``config``."""
    if blob is None:
        raise ModelLoadError(f"version {info.version}: weights are missing")
    if hashlib.sha256(blob).hexdigest() != info.sha256:
        raise ModelLoadError(f"version {info.version}: sha256 of the weights does not match its metadata")
    try:
        stored, params, _ = load_checkpoint(blob)
    except Exception as exc:  # a blob that passed the checksum but does not unpickle
        raise ModelLoadError(f"version {info.version}: unreadable checkpoint ({exc})") from exc
    if stored != config:
        raise ModelLoadError(f"version {info.version}: model shape {stored} differs from the configured {config}")
    return params


def load_version(store: Store, number: int, config: ModelConfig) -> tuple[VersionInfo, Params]:
    info = store.version(number)
    if info is None:
        raise ModelLoadError(f"version {number} is not in the registry")
    return info, verified_params(info, store.weights(number), config)


def initial_params(settings: Settings) -> Params:
    """Θ_0: the configured pre-trained checkpoint, else a seeded random init."""
    config = settings.model()
    if settings.initial_model is None:
        return BaseLearner(config, settings.train(), settings.seed).params()
    try:
        stored, params, _ = load_checkpoint(settings.initial_model.read_bytes())
    except (OSError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"ASMG_INITIAL_MODEL {settings.initial_model}: cannot read checkpoint ({exc})") from exc
    if stored != config:
        raise ModelLoadError(f"ASMG_INITIAL_MODEL has model shape {stored}, the settings say {config}")
    return params


def ensure_initial_model(store: Store, settings: Settings) -> None:
    """Publish Θ_0 as version 1 unless the registry already has a version, so
    ``/v1/predict`` works before the first period closes."""
    if store.pointer().version is None:
        version = new_version(settings.model(), initial_params(settings), 0, "initial", note="initial model")
        if store.publish_initial(version):
            log.info("published the initial model as version 1")


@dataclass
class PeriodReport:
    period: int
    version: int
    events: int
    published: str  # "generated" or "iu"
    metrics: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""


class PeriodTrainer:
    """Owns the update method's state between periods and trains closed ones in order."""

    def __init__(self, store: Store, settings: Settings, owner: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.config = settings.model()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.through: int | None = None  # what the in-memory state has learnt, None = reload
        self.updater: Updater
        self.history: HistoryBuilder[ItemRef]
        self.seq = 0

    # -- state --------------------------------------------------------------------

    def _fresh_updater(self) -> Updater:
        learner = BaseLearner(self.config, self.settings.train(), self.settings.seed)
        first = self.store.versions()
        if first and first[0].trained_through == 0:
            # start from the very weights replicas served, not a re-drawn init
            learner.model.load_params(load_version(self.store, first[0].version, self.config)[1])
        else:
            learner.model.load_params(initial_params(self.settings))
        s = self.settings
        overrides = {
            "window": s.window,
            "hidden": s.meta_hidden,
            "lr": s.meta_lr,
            "warmup": s.warmup,
            "native_kernels": s.native_kernels,
        }
        return make_updater(self.settings.method, learner, self.settings.seed, overrides, self.settings.baselines())

    def _load(self) -> None:
        through, blob = self.store.trainer_progress()
        self.updater = self._fresh_updater()
        self.history = HistoryBuilder(self.config.history_length)
        self.seq = 0
        if blob is not None:
            state = torch.load(io.BytesIO(blob), weights_only=True)
            if state["method"] != self.settings.method:
                raise StoreError(
                    f"the stored trainer state is for method {state['method']!r}, the settings say "
                    f"{self.settings.method!r}; clear the store or set ASMG_METHOD back"
                )
            self.updater.load_state_dict(state["updater"])
            self.history.load_state_dict(state["history"])
            self.seq = int(state["seq"])
        self.through = through

    def _state_bytes(self) -> bytes:
        buffer = io.BytesIO()
        state = {
            "method": self.settings.method,
            "updater": self.updater.state_dict(),
            "history": self.history.state_dict(),
            "seq": self.seq,
        }
        torch.save(state, buffer)
        return buffer.getvalue()

    # -- the loop -----------------------------------------------------------------

    def pending(self) -> int:
        """Closed periods not yet trained."""
        if self.through is None:
            self._load()
        assert self.through is not None
        return self.store.open_period() - 1 - self.through

    def train_pending(self) -> list[PeriodReport]:
        """Train every closed period not yet trained, oldest first."""
        reports = []
        while self.pending() > 0:
            if not self.store.acquire_lease(self.owner, self.settings.lease_seconds):
                break
            if self.store.trained_through() != self.through:
                self._load()  # another trainer committed while this one waited
                continue
            assert self.through is not None
            try:
                reports.append(self.train_period(self.through + 1))
            except Exception:
                self.through = None  # the in-memory state may be half-updated: reload it
                raise
        return reports

    def _status(self, **fields: Any) -> None:
        self.store.set_trainer_status({"owner": self.owner, "updated": time.time(), **fields})

    def train_period(self, period: int) -> PeriodReport:
        seconds: dict[str, float] = {}
        last_report = self.store.trainer_status().get("last_period")
        started = time.perf_counter()

        def phase(name: str) -> None:
            nonlocal started
            now = time.perf_counter()
            seconds[name] = now - started
            started = now

        self._status(state="training", period=period, last_period=last_report)
        events = self.store.read_period(period)
        examples = encode_stream(
            [(e.user_id, e.item_id, e.categories, e.label) for e in events], self.config, self.history, self.seq
        )
        self.seq += len(events)
        phase("read")

        # progressive validation: the model replicas served during this period, on its data
        n_layers = self.config.n_layers
        served = self.store.pointer().version
        metrics: dict[str, float] = {"events": float(len(events)), "served_version": float(served or 0)}
        if served is not None:
            try:
                _, params = load_version(self.store, served, self.config)
                metrics["pv_auc"], metrics["pv_logloss"] = score(params, examples, n_layers)
            except ModelLoadError as exc:
                log.warning("period %d: cannot score the served model: %s", period, exc)
        phase("evaluate")

        # the gate's evidence comes before the update: both candidates for this period, out of sample
        generated_won = self._generator_won(examples, metrics, n_layers)
        phase("gate")

        serving = self.updater.update(examples)
        iu_params = self.updater.learner.params()
        phase("update")

        published, note = self._choose(generated_won, metrics)

        version = new_version(
            self.config,
            serving if published == "generated" else iu_params,
            period,
            self.settings.method if published == "generated" else "iu",
            metrics,
            note,
        )
        self.renew_lease()
        info = self.store.commit_period(version, self._state_bytes(), self.settings.keep_versions)
        self.through = period
        phase("publish")
        self._drop_old_logs(period)

        report = PeriodReport(period, info.version, len(events), published, info.metrics, seconds, note)
        self._status(state="idle", period=None, last_period=report_dict(report))
        log.info(
            "period %d: %d events, served v%s AUC %.4f; published v%d (%s)%s",
            period,
            len(events),
            served,
            metrics.get("pv_auc", float("nan")),
            info.version,
            published,
            f": {note}" if note else "",
        )
        return report

    def _drop_old_logs(self, trained: int) -> None:
        """Delete the logs of trained periods beyond ``ASMG_KEEP_LOG_PERIODS``: the
        trainer's state holds what it needs of them, and a store in memory
        (Redis) would otherwise grow with every event ever logged."""
        keep = self.settings.keep_log_periods
        if keep and trained > keep:
            try:
                self.store.drop_logs(trained - keep, self.config.history_length)
            except Exception as exc:  # housekeeping after the commit, never a failed period; the next one retries
                log.warning("period %d: could not delete old logs: %s", trained, exc)

    def _generator_won(self, examples: Examples, metrics: dict[str, float], n_layers: int) -> bool | None:
        """Did the generated model beat IU on the newest period? None without evidence.

        Both candidates for this period, the model the generator made last
        period (regenerated: same window, state and weights) and the IU model,
        are scored on its data before either trains on it. Comparing after the
        update would be unfair: IU has then just fitted this very period.
        """
        if not (self.settings.quality_gate and isinstance(self.updater, Asmg) and self.updater.generating):
            return None
        metrics["gate_generated_auc"], _ = score(self.updater.generate(), examples, n_layers)
        metrics["gate_iu_auc"], _ = score(self.updater.learner.params(), examples, n_layers)
        return bool(metrics["gate_generated_auc"] >= metrics["gate_iu_auc"])

    def _choose(self, generated_won: bool | None, metrics: dict[str, float]) -> tuple[str, str]:
        """Publish the method's model, unless it is IU anyway or lost to IU."""
        if not isinstance(self.updater, Asmg):
            return "generated", ""
        if not self.updater.generating:
            return "iu", "meta generator warming up: IU"
        if not self.settings.quality_gate:
            return "generated", ""
        if generated_won is None:
            return "iu", "quality gate: no evidence yet (first generated model); published IU"
        if not generated_won:
            return "iu", (
                f"quality gate: on this period the generated model's AUC {metrics['gate_generated_auc']:.4f} "
                f"was below IU's {metrics['gate_iu_auc']:.4f}; published IU"
            )
        return "generated", ""

    def renew_lease(self) -> None:
        if not self.store.acquire_lease(self.owner, self.settings.lease_seconds):
            raise StoreError("lost the trainer lease to another trainer")


def report_dict(report: PeriodReport) -> dict[str, Any]:
    return {
        "period": report.period,
        "version": report.version,
        "events": report.events,
        "published": report.published,
        "metrics": report.metrics,
        "seconds": {k: round(v, 4) for k, v in report.seconds.items()},
        "note": report.note,
    }


def rollover(store: Store) -> int | None:
    """Close the open period; None (and a log line) when it is empty."""
    try:
        closed = store.rollover()
    except EmptyPeriod:
        log.info("rollover skipped: the open period has no interactions")
        return None
    log.info("closed period %d", closed)
    return closed


def lower_priority(settings: Settings) -> None:
    """Run this thread (the whole process when called first thing) at ``ASMG_TRAINER_NICE``.

    On a machine it shares with ``asmg serve``, a training period or a 6 MB
    publish at equal priority takes CPU from requests in bursts; below them it
    uses what they leave. Only ever lowers the priority (a thread already
    below the level stays there), which needs no privilege; a failure is logged."""
    if settings.trainer_nice == 0 or not hasattr(os, "setpriority"):
        return
    thread = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, thread)
    try:
        os.setpriority(os.PRIO_PROCESS, thread, max(current, settings.trainer_nice))
    except OSError as exc:
        log.warning("cannot run at nice %d (ASMG_TRAINER_NICE): %s", settings.trainer_nice, exc)


def run_trainer(store: Store, settings: Settings, stop: threading.Event, trainer: PeriodTrainer | None = None) -> None:
    """Train closed periods as they appear until ``stop`` is set; survive errors."""
    trainer = trainer or PeriodTrainer(store, settings)
    backoff = settings.trainer_poll_seconds
    try:
        while not stop.is_set():
            try:
                trainer.train_pending()
                backoff = settings.trainer_poll_seconds
            except Exception as exc:  # keep the loop alive; the period is retried
                log.exception("training failed; retrying in %.0f s", backoff)
                status = {**store.trainer_status(), "state": "error", "error": str(exc), "updated": time.time()}
                store.set_trainer_status(status)
                stop.wait(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            stop.wait(settings.trainer_poll_seconds)
    finally:
        store.release_lease(trainer.owner)
