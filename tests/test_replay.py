from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.core.config import ModelConfig, TrainConfig
from trainer.research.encoding import encode_log
from trainer.research.events import DataError
from trainer.research.replay import Protocol, Replay, period_bounds, theta0_dir
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


def test_a_warm_start_trains_the_generator_over_the_pretraining_span_and_leaves_theta0_alone() -> None:
    from trainer.learning.updaters import meta_config
    from trainer.learning.updaters.asmg import Asmg

    protocol = Protocol(pretrain_periods=6, pretrain_epochs=1, train_periods=2, valid_periods=1, test_periods=1)
    table = synthetic_events(n_users=40, n_items=60, n_periods=protocol.periods, events_per_period=120, seed=2)
    replay = Replay(encode_log(table, CONFIG), CONFIG, TrainConfig(lr=1e-2, batch_size=64), protocol)
    meta = meta_config("asmg-gru-multi", {"lr": 1e-2, "batch_size": 64})

    def generator_after(periods: int) -> tuple[Asmg, dict[str, torch.Tensor]]:
        asmg = Asmg(replay.pretrained(0), meta, 0)
        replay.warm_generator(asmg, 0, periods)
        return asmg, {k: v.clone() for k, v in asmg.generator.state_dict().items()}

    theta0 = {k: v.clone() for k, v in replay.pretrained(0).params().items()}
    cold, untrained = generator_after(0)
    warm, trained = generator_after(4)  # pre-trained on 1–2, IU over 3–6: one meta period (window 3–5)
    _, retrained = generator_after(4)
    assert any(not torch.equal(untrained[k], trained[k]) for k in trained)
    assert all(torch.equal(trained[k], retrained[k]) for k in trained)  # seeded: the same generator
    assert warm.models == [] and warm.meta_periods == 0 and warm.hidden is None  # its own sequence starts at Θ_0
    assert all(torch.equal(v, warm.learner.params()[k]) for k, v in theta0.items())
    assert all(torch.equal(v, replay.pretrained(0).params()[k]) for k, v in theta0.items())
    assert warm.meta_optimizer.state and not cold.meta_optimizer.state
    with pytest.raises(ValueError, match="none of the 6 pre-training periods"):
        replay.warm_generator(cold, 0, 6)


def test_each_data_set_keeps_its_own_theta0_for_the_same_base_settings(tmp_path: Path) -> None:
    small = theta0_dir(tmp_path, "ml-latest-small", {"lr": 0.001, "batch_size": 128})
    assert small != theta0_dir(tmp_path, "ml-100k", {"lr": 0.001, "batch_size": 128})
    assert small == theta0_dir(tmp_path, "ml-latest-small", {"batch_size": 128, "lr": 0.001})
    assert small.parent.parent == tmp_path
