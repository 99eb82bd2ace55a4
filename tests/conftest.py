from __future__ import annotations

import pytest
import torch

from trainer.config import ModelConfig, TrainConfig
from trainer.features import EncodedLog, encode_log
from trainer.synthetic import synthetic_events

SMALL = ModelConfig(user_buckets=512, item_buckets=512, category_buckets=32, history_length=10)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_log() -> EncodedLog:
    table = synthetic_events(n_users=60, n_items=80, n_periods=8, events_per_period=200, seed=3)
    return encode_log(table, SMALL)


@pytest.fixture
def small_config() -> ModelConfig:
    return SMALL


@pytest.fixture
def small_train() -> TrainConfig:
    return TrainConfig(lr=1e-2, batch_size=64)
