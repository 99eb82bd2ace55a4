"""The period loop: turn each closed period into the next serving model.

For every closed period, in order, exactly once: read its log, score the
model that served it (progressive validation), run the update method, apply
the quality gate and the held-back check, and publish the result together with
the trainer state the next period needs (one atomic ``commit_period``). A
restarted trainer resumes from the store; two trainers never publish the same
period (a lease, and ``commit_period`` refusing anything but the next period).

The loop survives its dependencies: any failure (the store unreachable or
stalled, a period that fails) drops the in-memory state, which is reloaded
from the store, and the period is tried again after a capped exponential
backoff with jitter. Since progress moves only with a commit, a retried
period is trained once. ``run_supervised`` restarts the loop should it die
anyway. The trainer's status record (state, heartbeat, failures, last
success) tells every API replica whether it makes progress
(:mod:`trainer.core.health`).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from trainer.core.config import ModelConfig
from trainer.core.features import Examples, examples_from_refs, item_ref, user_row
from trainer.core.health import HEARTBEAT_SECONDS
from trainer.core.model import Params, score
from trainer.core.registry import (
    ModelLoadError,
    NonFiniteWeights,
    Published,
    all_finite,
    ensure_initial_model,
    full_turn,
    initial_params,
    keep_for,
    load_version,
    publication,
)
from trainer.core.retry import Backoff
from trainer.core.settings import Settings
from trainer.core.store.base import Interaction, NewVersion, Store, StoreError
from trainer.learning import distributed
from trainer.learning.learner import BaseLearner
from trainer.learning.updaters import Updater, make_updater
from trainer.learning.updaters.asmg import Asmg

log = logging.getLogger("asmg.trainer")

RETRY_BASE_SECONDS = 1.0  # the first wait after a failure; doubled per failure up to ASMG_TRAINER_RETRY_MAX_SECONDS


@dataclass
class PeriodReport:
    period: int
    version: int
    events: int
    published: str  # one of trainer.core.health.PUBLISHED
    metrics: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Choice:
    """What a period publishes."""

    published: str  # as PeriodReport.published
    params: Params
    method: str  # the version's method label
    note: str = ""
    refused: bool = False  # a generated model was there to serve, and the gate or the check refused it


def encode_stream(events: Sequence[Interaction], config: ModelConfig) -> Examples:
    """Logged events → examples. Each event's history is the one the store logged with it:
    the user's recent clicks as they stood just before the event, the very list the API
    reads when it scores, so training sees what serving saw."""
    return examples_from_refs(
        [user_row(e.user_id, config) for e in events],
        [item_ref(e.item_id, e.categories, config) for e in events],
        [[item_ref(c.item_id, c.categories, config) for c in e.history] for e in events],
        [float(e.label) for e in events],
        config,
    )


class PeriodTrainer:
    """Owns the update method's state between periods and trains closed ones in order."""

    def __init__(self, store: Store, settings: Settings, owner: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.config = settings.model()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.through: int | None = None  # what the in-memory state has learnt, None = reload
        self.updater: Updater
        self.state_bytes = 0
        self.status: dict[str, Any] | None = None  # the status record as this trainer last wrote it
        self._next_heartbeat = 0.0
        self._initial_checked = False
        self.fit_group: distributed.FitGroup | None = None  # the helpers base fits run on (ASMG_BASE_PROCS)
        # the version this trainer published last, the base of its next delta; None: the next is a full snapshot
        self.published: Published | None = None

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
        if s.meta_blend is not None:
            overrides["blend"] = s.meta_blend
        return make_updater(self.settings.method, learner, self.settings.seed, overrides, self.settings.baselines())

    def _start_fit_group(self) -> None:
        """Start the processes base fits run on (ASMG_BASE_PROCS > 1), or start them again
        after a failure broke the group."""
        if self.settings.base_procs < 2 or (self.fit_group is not None and not self.fit_group.broken):
            return
        self.close()
        self.fit_group = distributed.spawn(self.settings.base_procs, self.settings.torch_threads)
        distributed.install(self.fit_group)

    def close(self) -> None:
        """Stop the base fits' helper processes, if any (the next load starts them again)."""
        if self.fit_group is not None:
            distributed.install(None)
            self.fit_group.close()
            self.fit_group = None

    def _load(self) -> None:
        self._start_fit_group()
        through, blob = self.store.trainer_progress()
        self.published = None
        self.updater = self._fresh_updater()
        self.state_bytes = len(blob) if blob is not None else 0
        if blob is not None:
            state = torch.load(io.BytesIO(blob), weights_only=True)
            if state["method"] != self.settings.method:
                raise StoreError(
                    f"the stored trainer state is for method {state['method']!r}, the settings say "
                    f"{self.settings.method!r}; clear the store or set ASMG_METHOD back"
                )
            # states written before histories were logged with events also hold "history" and "seq": unused
            self.updater.load_state_dict(state["updater"])
        self.through = through

    def _state_bytes(self) -> bytes:
        buffer = io.BytesIO()
        state = {
            "method": self.settings.method,
            "updater": self.updater.state_dict(),
        }
        torch.save(state, buffer)
        return buffer.getvalue()

    # -- status -------------------------------------------------------------------

    def _write_status(self, **fields: Any) -> None:
        """Update this trainer's status record. The heartbeat moves only with progress: an idle
        round, a commit, or a phase of a period while no failed round is outstanding (a period
        failing over and over runs its first phases each time, and must not look alive)."""
        if self.status is None:  # carry over what an earlier trainer recorded (its last period)
            carried = ("last_period", "last_success", "generated_refused_in_a_row")
            self.status = {k: v for k, v in self.store.trainer_status().items() if k in carried}
        now = time.time()
        self.status.update(owner=self.owner, updated=now, **fields)
        if not self.status.get("consecutive_failures"):
            self.status["heartbeat"] = now
            self._next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS
        self.store.set_trainer_status(self.status)

    def record_failure(self, exc: BaseException, failures: int, retry_in: float) -> None:
        """Note a failed round in the status record, if the store takes it; the heartbeat stays
        where it was, so a trainer that keeps failing shows as not making progress."""
        self.through = None  # the in-memory state may be half-updated: reload it from the store
        if self.status is None:
            return  # never held the lease: the record is another trainer's
        self.status.update(
            state="retrying",
            consecutive_failures=failures,
            last_error=f"{type(exc).__name__}: {exc}"[:1000],
            last_failure=time.time(),
            retry_in=round(retry_in, 3),
        )
        try:
            self.store.set_trainer_status(self.status)
        except Exception as write_error:  # the store is what failed, most likely
            log.debug("could not record the failure: %s", write_error)

    # -- the loop -----------------------------------------------------------------

    def run_once(self) -> list[PeriodReport]:
        """One round of the loop: hold the lease (or stand by while another trainer holds it),
        publish the initial model if the registry is empty, train every waiting period."""
        if not self.store.acquire_lease(self.owner, self.settings.lease_seconds):
            return []
        if not self._initial_checked:
            ensure_initial_model(self.store, self.settings)
            self._initial_checked = True
        reports = self.train_pending()
        # a commit has just written the record; otherwise a heartbeat now and then (and leave "retrying")
        if self.status is None or self.status.get("state") != "idle" or self._heartbeat_due():
            self._write_status(state="idle", period=None, consecutive_failures=0, retry_in=None)
        return reports

    def _heartbeat_due(self) -> bool:
        return time.monotonic() >= self._next_heartbeat

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

    def train_period(self, period: int) -> PeriodReport:
        seconds: dict[str, float] = {}
        started = time.perf_counter()

        def phase(name: str) -> None:
            nonlocal started
            now = time.perf_counter()
            seconds[name] = now - started
            started = now
            self.renew_lease()
            self._write_status(state="training", period=period, phase=name)

        self._write_status(state="training", period=period, phase=None)
        events = self.store.read_period(period)
        examples = encode_stream(events, self.config)
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
        generated_won = self._generator_won(examples, metrics)
        phase("gate")

        fit, held = self._split(examples, period)
        serving = self.updater.update(fit)
        iu_params = self.updater.learner.params()
        phase("update")

        choice = self._choose(generated_won, serving, iu_params, held, metrics)
        if held is not None:  # learnt before anything is served; the check's verdict stands for the result
            assert isinstance(self.updater, Asmg)
            self.updater.absorb(held)
            # generated again only when it is what goes out
            params = self.updater.generate() if choice.published == "generated" else self.updater.learner.params()
            choice = replace(choice, params=params)
        choice = self._finite_or_held(choice)
        phase("check")

        version, digests, number, keep = self._publication(choice, period, metrics)
        self.renew_lease()
        state = self._state_bytes()
        info = self.store.commit_period(version, state, keep)
        self.through = period
        self.published = Published(info.version, _copy(choice.params), digests) if info.version == number else None
        self.state_bytes = len(state)
        seconds["publish"] = time.perf_counter() - started
        self._drop_old_logs(period)

        report = PeriodReport(period, info.version, len(events), choice.published, info.metrics, seconds, choice.note)
        assert self.status is not None  # written by every phase of this period
        refusals = int(self.status.get("generated_refused_in_a_row") or 0) + 1 if choice.refused else 0
        self._write_status(
            state="idle",
            generated_refused_in_a_row=refusals,
            period=None,
            phase=None,
            consecutive_failures=0,
            last_period=report_dict(report),
            last_success=time.time(),
            state_bytes=self.state_bytes,
        )
        log.info(
            "period %d: %d events, served v%s AUC %.4f; published v%d (%s)%s",
            period,
            len(events),
            served,
            metrics.get("pv_auc", float("nan")),
            info.version,
            choice.published,
            f": {choice.note}" if choice.note else "",
        )
        return report

    def _publication(
        self, choice: Choice, period: int, metrics: dict[str, float]
    ) -> tuple[NewVersion, dict[str, str], int, int]:
        """The version for ``choice``: a delta on the version this trainer published last when that is the
        newest and the next number is not due a full snapshot; with its tensors' digests, the number the
        commit will give it, and how many versions the commit keeps (every kept version's chain whole)."""
        every = self.settings.full_snapshot_every
        number = max((v.version for v in self.store.versions()), default=0) + 1
        base = self.published
        if base is not None and (base.version != number - 1 or full_turn(number, every)):
            base = None
        version, digests = publication(
            self.config, choice.params, period, choice.method, metrics, choice.note, base=base
        )
        pointer = self.store.pointer()
        keep = keep_for(number, self.settings.keep_versions, every, pointer.version if pointer.pinned else None)
        return version, digests, number, keep

    def _split(self, examples: Examples, period: int) -> tuple[Examples, Examples | None]:
        """The period's events the update trains on, and a seeded random ``ASMG_CHECK_FRACTION``
        of them held back to check its result against IU's on events neither learnt from (ASMG
        only). The held-back events are learnt right after the check (``Asmg.absorb``)."""
        n_held = int(len(examples) * self.settings.check_fraction) if isinstance(self.updater, Asmg) else 0
        if not n_held:
            return examples, None
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(self.settings.seed + period))
        return examples.select(order[n_held:].sort().values), examples.select(order[:n_held].sort().values)

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

    def _generator_won(self, examples: Examples, metrics: dict[str, float]) -> bool | None:
        """Did the generated model beat IU on the newest period (:meth:`Asmg.gate_scores`)? None without evidence."""
        if not (self.settings.quality_gate and isinstance(self.updater, Asmg)):
            return None
        scores = self.updater.gate_scores(examples)
        if scores is None:
            return None
        metrics["gate_generated_auc"], metrics["gate_iu_auc"] = scores
        return scores.generated >= scores.iu

    def _choose(
        self,
        generated_won: bool | None,
        serving: Params,
        iu_params: Params,
        held: Examples | None,
        metrics: dict[str, float],
    ) -> Choice:
        """Publish the method's model unless it is IU anyway, lost the gate or fails the
        held-back check; IU's then."""
        method = self.settings.method
        if not isinstance(self.updater, Asmg):
            return Choice("generated", serving, method)
        iu = Choice("iu", iu_params, "iu")
        if not self.updater.generating:
            choice = replace(iu, note="meta generator warming up: IU")
        elif not self.settings.quality_gate:
            choice = Choice("generated", serving, method)
        elif generated_won is None:
            choice = replace(iu, note="quality gate: no evidence yet (first generated model); published IU")
        elif not generated_won:
            choice = replace(
                iu,
                note=f"quality gate: on this period the generated model's AUC {metrics['gate_generated_auc']:.4f} "
                f"was below IU's {metrics['gate_iu_auc']:.4f}; published IU",
                refused=True,
            )
        else:
            choice = Choice("generated", serving, method)
        if choice.published == "generated":
            refusal = self._check(serving, iu_params, held, metrics)
            if refusal:
                choice = replace(iu, note=f"{refusal}; published IU", refused=True)
        return choice

    def _check(self, generated: Params, iu_params: Params, held: Examples | None, metrics: dict[str, float]) -> str:
        """Why the generated model must not be served ("" if it may): it is not finite, or on
        the held-back events its LogLoss exceeds IU's by more than ``ASMG_CHECK_TOLERANCE``."""
        if not all_finite(generated):
            return "check: the generated weights hold NaN or infinity"
        if held is None or not len(held):
            return ""
        n_layers = self.config.n_layers
        _, generated_loss = score(generated, held, n_layers)
        _, iu_loss = score(iu_params, held, n_layers)
        metrics.update(check_events=float(len(held)), check_generated_logloss=generated_loss, check_iu_logloss=iu_loss)
        limit = iu_loss * (1 + self.settings.check_tolerance)
        if not generated_loss <= limit:  # NaN fails too
            return (
                f"check: on the {len(held)} held-back events the generated model's LogLoss {generated_loss:.4f} "
                f"exceeds IU's {iu_loss:.4f} by more than {self.settings.check_tolerance:.0%}"
            )
        return ""

    def _finite_or_held(self, choice: Choice) -> Choice:
        """``choice`` if its weights are finite, else the served version's weights again."""
        if all_finite(choice.params):
            return choice
        served = self.store.pointer().version
        if served is None:
            raise NonFiniteWeights(
                f"the {choice.published} model's weights hold NaN or infinity, and nothing is served"
            )
        info, params = load_version(self.store, served, self.config)
        log.error(
            "the %s model's weights hold NaN or infinity; publishing version %d's again", choice.published, served
        )
        return Choice(
            "held",
            params,
            info.method,
            f"held back: the {choice.published} model's weights hold NaN or infinity; republished v{served}'s weights",
            refused=choice.refused or choice.published == "generated",
        )

    def renew_lease(self) -> None:
        if not self.store.acquire_lease(self.owner, self.settings.lease_seconds):
            raise StoreError("lost the trainer lease to another trainer")


def _copy(params: Params) -> Params:
    """A copy no update can change: the next delta is taken against it."""
    return {name: value.detach().clone() for name, value in params.items()}


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
    """Train closed periods as they appear until ``stop`` is set. Every failure is retried
    after a capped exponential backoff with jitter; the loop itself never gives up."""
    trainer = trainer or PeriodTrainer(store, settings)
    backoff = Backoff(RETRY_BASE_SECONDS, settings.trainer_retry_max_seconds)
    try:
        while not stop.is_set():
            try:
                trainer.run_once()
            except Exception as exc:
                delay = backoff.next_delay()
                log.error("trainer round failed (%d in a row): %s; retrying in %.1f s", backoff.failures, exc, delay)
                log.debug("the failure", exc_info=True)
                trainer.record_failure(exc, backoff.failures, delay)
                stop.wait(delay)
                continue
            backoff.reset()
            stop.wait(settings.trainer_poll_seconds)
    finally:
        trainer.close()
        try:
            store.release_lease(trainer.owner)
        except Exception as exc:  # it lapses by itself
            log.warning("could not release the trainer lease: %s", exc)


def run_supervised(
    store: Store,
    settings: Settings,
    stop: threading.Event,
    trainer: PeriodTrainer,
    on_restart: Callable[[], None] | None = None,
) -> None:
    """:func:`run_trainer`, started again (after a backoff) whenever it ends before ``stop``
    is set: the in-process trainer outlives whatever escapes the loop's own handling."""
    backoff = Backoff(RETRY_BASE_SECONDS, settings.trainer_retry_max_seconds)
    while not stop.is_set():
        try:
            run_trainer(store, settings, stop, trainer)
        except BaseException:  # a thread's last word; it is logged and the loop starts again
            log.exception("the trainer loop died")
        if stop.is_set():
            return
        trainer.through = None
        delay = backoff.next_delay()
        log.error("restarting the trainer loop in %.1f s", delay)
        if on_restart is not None:
            on_restart()
        stop.wait(delay)
