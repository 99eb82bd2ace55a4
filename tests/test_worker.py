"""The period trainer without HTTP: warm-up, the quality gate, progressive validation."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from app.metrics import StoreCollector
from tests.service import small_settings, traffic
from trainer.core.features import Examples
from trainer.core.model import checkpoint_bytes
from trainer.core.registry import (
    NonFiniteWeights,
    ensure_initial_model,
    initial_params,
    load_version,
    new_version,
    verified_params,
)
from trainer.core.settings import Settings
from trainer.core.store import DroppedPeriod, LocalStore, Store
from trainer.core.store.base import Interaction, VersionInfo
from trainer.learning.learner import BaseLearner
from trainer.learning.updaters.asmg import Asmg
from trainer.learning.updaters.incremental import BatchUpdate
from trainer.loop.worker import PeriodTrainer, lower_priority


def feed(store: Store, settings: Settings, periods: int) -> None:
    for events in traffic(periods, seed=2):
        store.append(
            [Interaction(e["user_id"], e["item_id"], tuple(e["categories"]), e["label"], 1.0) for e in events],
            settings.history_length,
        )
        store.rollover()


def train(tmp_path: Path, periods: int, **overrides: object) -> list[dict[str, object]]:
    settings = small_settings(tmp_path / "state", **overrides)
    store = LocalStore(settings.state_dir)
    try:
        ensure_initial_model(store, settings)
        feed(store, settings, periods)
        PeriodTrainer(store, settings).train_pending()
        return [v.to_dict() for v in store.versions()]
    finally:
        store.close()


def test_warm_up_then_gate_then_generated(tmp_path: Path) -> None:
    versions = train(tmp_path, 7)
    notes = [v["note"] for v in versions]
    # k = 3 models before the first meta step, then one period without evidence for the gate
    assert [v["method"] for v in versions[:5]] == ["initial", "iu", "iu", "iu", "iu"]
    assert all("warming up" in n for n in notes[1:4]) and "no evidence" in notes[4]
    for v in versions[5:]:
        metrics = v["metrics"]
        assert isinstance(metrics, dict)
        won = metrics["gate_generated_auc"] >= metrics["gate_iu_auc"]
        assert v["method"] == ("asmg-gru-multi" if won else "iu")
        assert won or "quality gate" in str(v["note"])
    assert all(0 <= v["metrics"]["pv_auc"] <= 1 for v in versions[1:])  # type: ignore[index]


def test_a_diverging_generator_is_held_back_by_the_gate(tmp_path: Path) -> None:
    # a meta learning rate this large wrecks the generated models
    gated = train(tmp_path / "gated", 8, meta_lr=5.0, meta_blend=1.0)
    lost = [
        v
        for v in gated
        if "gate_iu_auc" in v["metrics"] and v["metrics"]["gate_generated_auc"] < v["metrics"]["gate_iu_auc"]
    ]  # type: ignore[index,operator]
    assert lost, "the wrecked generator never lost to IU"
    assert all(v["method"] == "iu" and "quality gate: on this period" in str(v["note"]) for v in lost)
    ungated = train(tmp_path / "ungated", 8, meta_lr=5.0, meta_blend=1.0, quality_gate=False, check_fraction=0)
    assert [v["method"] for v in ungated[4:]] == ["asmg-gru-multi"] * 5


def test_a_diverging_generator_fails_the_held_back_check_and_iu_is_served(tmp_path: Path) -> None:
    # no track-record gate: only the check on each period's held-back events stands in the way
    # (a fifth of these small periods: on 7 events a wrecked model can be confidently right by luck);
    # the generated model served whole (blend 1): the default half step dilutes the wreck
    versions = train(tmp_path, 8, meta_lr=5.0, meta_blend=1.0, quality_gate=False, check_fraction=0.2)
    generated = versions[4:]
    assert len(generated) == 5
    for v in generated:
        metrics = v["metrics"]
        assert isinstance(metrics, dict)
        assert metrics["check_events"] == 30
        assert metrics["check_generated_logloss"] > 1.5 * metrics["check_iu_logloss"]
        assert v["method"] == "iu" and str(v["note"]).startswith("check: on the 30 held-back events")
    # a sound generator passes the same check
    sound = train(tmp_path / "sound", 8, quality_gate=False, check_fraction=0.2)
    assert [v["method"] for v in sound[4:]] == ["asmg-gru-multi"] * 5


def nan_params(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.full_like(value, float("nan")) for name, value in params.items()}


def test_non_finite_generated_weights_are_never_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Asmg, "generate", lambda self: nan_params(self.learner.params()))
    versions = train(tmp_path, 6, quality_gate=False)
    assert [v["method"] for v in versions[4:]] == ["iu", "iu", "iu"]
    assert all("generated weights hold NaN or infinity" in str(v["note"]) for v in versions[4:])


def test_when_every_candidate_is_broken_the_served_weights_are_published_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = small_settings(tmp_path / "state", method="iu")
    store = LocalStore(settings.state_dir)
    try:
        ensure_initial_model(store, settings)
        feed(store, settings, 1)
        trainer = PeriodTrainer(store, settings)
        trainer.train_pending()  # period 1 as usual
        good = store.pointer().version
        assert good == 2
        feed(store, settings, 1)
        monkeypatch.setattr(BatchUpdate, "update", lambda self, period: nan_params(self.learner.params()))
        (report,) = trainer.train_pending()
        assert report.published == "held" and "hold NaN or infinity" in report.note and "v2" in report.note
        assert store.trained_through() == 2  # the period is done, not retried forever
        _, republished = load_version(store, report.version, settings.model())
        _, served = load_version(store, good, settings.model())
        assert all(torch.equal(republished[name], served[name]) for name in served)
    finally:
        store.close()


def test_weights_with_nan_are_refused_at_publish_and_at_load(tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "state")
    config = settings.model()
    broken = nan_params(initial_params(settings))
    with pytest.raises(NonFiniteWeights):
        new_version(config, broken, 1, "iu")
    blob = checkpoint_bytes(config, broken, {})
    info = VersionInfo(3, hashlib.sha256(blob).hexdigest(), 1, "iu", 0.0, len(blob))
    with pytest.raises(NonFiniteWeights, match="NaN or infinity"):
        verified_params(info, blob, config)


def test_every_event_is_learnt_in_its_own_period_despite_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fitted: list[int] = []
    fit = BaseLearner.fit

    def counting(self: BaseLearner, ex: Examples, *args: Any, **kwargs: Any) -> float:
        fitted.append(len(ex))
        return fit(self, ex, *args, **kwargs)

    monkeypatch.setattr(BaseLearner, "fit", counting)
    settings = small_settings(tmp_path / "state")
    store = LocalStore(settings.state_dir)
    try:
        ensure_initial_model(store, settings)
        feed(store, settings, 4)
        PeriodTrainer(store, settings).train_pending()
    finally:
        store.close()
    held = int(150 * settings.check_fraction)
    # IU learns each period's events but the held-back ones, then those, before the period is published
    assert fitted == [150 - held, held] * 4


def test_logs_of_old_trained_periods_are_deleted_as_configured(tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "state", keep_log_periods=2)
    store = LocalStore(settings.state_dir)
    try:
        ensure_initial_model(store, settings)
        feed(store, settings, 5)
        trainer = PeriodTrainer(store, settings)
        trainer.train_pending()
        assert store.trained_through() == 5
        for period in (1, 2, 3):
            with pytest.raises(DroppedPeriod):
                store.read_period(period)
        assert all(store.read_period(period) for period in (4, 5))
        # a restarted trainer goes on from its stored state, the dropped logs not needed
        store.release_lease(trainer.owner)
        feed(store, settings, 1)
        assert [r.period for r in PeriodTrainer(store, settings).train_pending()] == [6]
    finally:
        store.close()


@pytest.mark.parametrize("nice", [0, 7])
def test_the_trainer_runs_below_serving_at_the_configured_nice(nice: int) -> None:
    seen: list[tuple[int, int]] = []

    def in_a_thread() -> None:  # a thread of its own: the test process keeps its priority
        before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        lower_priority(Settings(trainer_nice=nice))
        seen.append((before, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    ((before, after),) = seen
    assert after == (before if nice == 0 else max(before, nice))
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_refusals_of_the_generated_model_are_counted_in_a_row_and_exported(tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "state", meta_lr=5.0, meta_blend=1.0, quality_gate=False, check_fraction=0.2)
    store = LocalStore(settings.state_dir)
    try:
        ensure_initial_model(store, settings)
        feed(store, settings, 8)
        PeriodTrainer(store, settings).train_pending()
        refused = [v.version for v in store.versions() if v.note.startswith("check:")]
        assert store.trainer_status()["generated_refused_in_a_row"] == len(refused) == 5
        families = {f.name: f for f in StoreCollector(store, settings.trainer_stall_seconds).collect()}
        assert [s.value for s in families["asmg_trainer_generated_refused_in_a_row"].samples] == [5]
        published = {s.labels["choice"]: s.value for s in families["asmg_last_period_published"].samples}
        assert published == {"generated": 0, "iu": 1, "held": 0}
    finally:
        store.close()


@pytest.mark.parametrize(
    ("method", "blend", "expected"),
    [
        ("asmg-gru-multi", None, 0.5),
        ("asmg-gru-multi", 1.0, 1.0),
        ("asmg-linear", None, 1.0),
        ("asmg-linear", 0.5, 0.5),
    ],
)
def test_the_blend_reaches_the_trainer_with_each_methods_default(
    tmp_path: Path, method: str, blend: float | None, expected: float
) -> None:
    settings = small_settings(tmp_path / "state", method=method, meta_blend=blend)
    store = LocalStore(settings.state_dir)
    try:
        ensure_initial_model(store, settings)
        updater = PeriodTrainer(store, settings)._fresh_updater()
        assert isinstance(updater, Asmg)
        assert updater.meta.blend == expected
    finally:
        store.close()
