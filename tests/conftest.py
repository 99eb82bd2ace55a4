from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import torch

from tests.faults import RedisClusterServers, RedisSentinels, RedisServer
from trainer.core.config import ModelConfig, TrainConfig
from trainer.core.store import LocalStore, RedisStore, Store
from trainer.research.encoding import EncodedLog, encode_log
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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway three-master Redis Cluster on loopback, for the whole session; yields one node's URL.
    Tests keep apart by key prefix (each prefix is its own hash tag, so its own slot)."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway primary, its replica and three Sentinels on loopback, for the whole session;
    yields the ``redis+sentinel://`` URL. Tests keep apart by key prefix."""
    sentinels = RedisSentinels(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        sentinels.start()
        yield sentinels.url
    finally:
        sentinels.close()


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


Opener = Callable[[], Store]


@pytest.fixture(params=["redis", "redis-sentinel", "redis-cluster", "local"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens store objects on one backing store, as separate processes would; closes them all afterwards."""
    make: Opener
    prefix = f"t{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        make = functools.partial(RedisStore, request.getfixturevalue("redis_url"), prefix)
    elif request.param == "redis-sentinel":
        make = functools.partial(RedisStore, request.getfixturevalue("redis_sentinel"), prefix, mode="sentinel")
    elif request.param == "redis-cluster":
        make = functools.partial(RedisStore, request.getfixturevalue("redis_cluster"), prefix, mode="cluster")
    else:
        make = functools.partial(LocalStore, tmp_path / "state")
    opened: list[Store] = []

    def open_one() -> Store:
        store = make()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(opener: Opener) -> Store:
    return opener()
