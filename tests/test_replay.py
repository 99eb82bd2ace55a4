from __future__ import annotations

import itertools

import numpy as np
import pytest

from trainer.core.config import ModelConfig, TrainConfig
from trainer.research.encoding import encode_log
from trainer.research.events import DataError
from trainer.research.replay import Protocol, Replay, period_bounds
from trainer.research.report import summarise
from trainer.research.synthetic import synthetic_events

CONFIG = ModelConfig(user_buckets=1024, item_buckets=1024, category_buckets=64, history_length=10)


def test_protocol_splits_the_twenty_scored_periods_10_3_7() -> None:
    protocol = Protocol()
    splits = [protocol.split(p) for p in range(12, 32)]
    assert protocol.periods == 31
    assert splits == ["train"] * 10 + ["valid"] * 3 + ["test"] * 7


def test_period_bounds_are_contiguous_and_balanced() -> None:
    bounds = period_bounds(1003, 31)
    assert bounds[0][0] == 0 and bounds[-1][1] == 1003
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = {b - a for a, b in bounds}
    assert max(sizes) - min(sizes) <= 1


def test_too_few_rows_for_the_periods_is_a_data_error() -> None:
    with pytest.raises(DataError, match="too few"):
        period_bounds(100, 31)


def test_asmg_gru_multi_beats_iu_on_drifting_preferences() -> None:
    table = synthetic_events(seed=0, events_per_period=800)
    replay = Replay(
        encode_log(table, CONFIG), CONFIG, TrainConfig(lr=1e-2, batch_size=128), Protocol(pretrain_epochs=3)
    )
    results = replay.run("iu", 0) + replay.run("asmg-gru-multi", 0, {"lr": 1e-2, "batch_size": 128})
    summary = summarise(results)
    assert summary["asmg-gru-multi"]["auc_mean"] > summary["iu"]["auc_mean"] + 0.03
    scored = [r.period for r in results if r.method == "iu"]
    assert scored == list(range(12, 32))
    assert all(np.isfinite(r.logloss) for r in results)
