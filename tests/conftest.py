from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
import torch

from tests.faults import RedisServer
from trainer.core.config import ModelConfig, TrainConfig
from trainer.core.features import EncodedLog, encode_log
from trainer.research.synthetic import synthetic_events

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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, for the whole session; yields its URL."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), aof=False)
    server.start(seconds=10)
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    with redis.Redis.from_url(redis_server) as client:
        client.flushall()
    return redis_server


@pytest.fixture(autouse=True)
def _no_asmg_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set their settings explicitly; a developer's ASMG_* variables must not leak in."""
    for name in [n for n in os.environ if n.startswith("ASMG_")]:
        monkeypatch.delenv(name)
