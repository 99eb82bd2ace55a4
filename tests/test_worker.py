"""The period trainer without HTTP: warm-up, the quality gate, progressive validation."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.service import small_settings, traffic
from trainer.settings import Settings
from trainer.store import DroppedPeriod, LocalStore, Store
from trainer.store.base import Interaction
from trainer.worker import PeriodTrainer, ensure_initial_model, lower_priority


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
    gated = train(tmp_path / "gated", 8, meta_lr=5.0)
    lost = [
        v
        for v in gated
        if "gate_iu_auc" in v["metrics"] and v["metrics"]["gate_generated_auc"] < v["metrics"]["gate_iu_auc"]
    ]  # type: ignore[index,operator]
    assert lost, "the wrecked generator never lost to IU"
    assert all(v["method"] == "iu" and "quality gate: on this period" in str(v["note"]) for v in lost)
    ungated = train(tmp_path / "ungated", 8, meta_lr=5.0, quality_gate=False)
    assert [v["method"] for v in ungated[4:]] == ["asmg-gru-multi"] * 5


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
