from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
import torch

from tests.service import free_port
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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, for the whole session; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not on PATH; the store tests need a real Redis (apt-get install redis-server)")
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(
        [*command, "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for_pong(port, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    with redis.Redis.from_url(redis_server) as client:
        client.flushall()
    return redis_server


def _wait_for_pong(port: int, process: subprocess.Popen[bytes], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"redis-server exited with code {process.returncode} before answering on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"redis-server did not answer PING on port {port} within {seconds:.0f} s")


@pytest.fixture(autouse=True)
def _no_asmg_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests set their settings explicitly; a developer's ASMG_* variables must not leak in."""
    for name in [n for n in os.environ if n.startswith("ASMG_")]:
        monkeypatch.delenv(name)
